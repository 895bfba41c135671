/** Bytes as "1.2 MB". */
export function formatBytes(value: string | number | undefined): string {
  const bytes = Number(value ?? 0);
  if (!Number.isFinite(bytes) || bytes <= 0) return '0 B';
  const units = ['B', 'KB', 'MB', 'GB'];
  let n = bytes;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit++;
  }
  return `${n >= 10 || unit === 0 ? Math.round(n) : n.toFixed(1)} ${units[unit]}`;
}

/** Newest first by the most telling timestamp each item has. */
export function newestFirst<T>(items: readonly T[], time: (item: T) => string | undefined): T[] {
  const ms = (item: T) => {
    const parsed = Date.parse(time(item) ?? '');
    return Number.isNaN(parsed) ? 0 : parsed;
  };
  return [...items].sort((a, b) => ms(b) - ms(a));
}

export function formatTime(iso: string | undefined, lang: string): string {
  if (!iso) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleString(lang === 'vi' ? 'vi-VN' : 'en-GB', { dateStyle: 'short', timeStyle: 'short' });
}
