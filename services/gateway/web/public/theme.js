// Set the theme before first paint so a dark-mode user never sees a white flash.
// A file, not an inline script, so a strict Content-Security-Policy (script-src 'self') allows it.
try {
  var t = localStorage.getItem('sa.theme');
  if (t !== 'light' && t !== 'dark') t = matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
  document.documentElement.dataset.theme = t;
  var l = localStorage.getItem('sa.lang');
  if (l === 'en' || l === 'vi') document.documentElement.lang = l;
} catch (e) {}
