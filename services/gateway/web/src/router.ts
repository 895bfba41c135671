import { useEffect, useState } from 'react';

// Hash routes ("#/chat/<id>?m=<message>"): the gateway serves one index.html, no server-side routes needed.
export interface Route {
  page: 'chat' | 'documents' | 'dashboard';
  sessionId: string;
  focusMessageId: string;
}

export function parseHash(hash: string): Route {
  const [path, query = ''] = hash.replace(/^#\/?/, '').split('?', 2);
  const parts = path.split('/').filter(Boolean).map((part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  });
  const params = new URLSearchParams(query);
  if (parts[0] === 'documents') return { page: 'documents', sessionId: '', focusMessageId: '' };
  if (parts[0] === 'dashboard') return { page: 'dashboard', sessionId: '', focusMessageId: '' };
  return { page: 'chat', sessionId: parts[0] === 'chat' ? (parts[1] ?? '') : '', focusMessageId: params.get('m') ?? '' };
}

export function chatHref(sessionId: string, messageId = ''): string {
  const base = sessionId ? `#/chat/${encodeURIComponent(sessionId)}` : '#/chat';
  return messageId ? `${base}?m=${encodeURIComponent(messageId)}` : base;
}

export function navigate(href: string, replace = false): void {
  if (replace) {
    history.replaceState(null, '', href);
    window.dispatchEvent(new HashChangeEvent('hashchange'));
  } else if (location.hash !== href) {
    location.hash = href;
  }
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseHash(location.hash));
    window.addEventListener('hashchange', onChange);
    return () => window.removeEventListener('hashchange', onChange);
  }, []);
  return route;
}
