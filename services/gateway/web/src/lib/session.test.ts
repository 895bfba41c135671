import { describe, expect, it } from 'vitest';
import { sessionTitle } from './session';

describe('sessionTitle', () => {
  it('keeps a short question, trimmed of punctuation and spaces', () => {
    expect(sessionTitle('  Thuật toán   Dijkstra là gì? ')).toBe('Thuật toán Dijkstra là gì');
    expect(sessionTitle('???')).toBe('New chat');
  });

  it('cuts a long question at a word boundary', () => {
    const title = sessionTitle('Giải thích chi tiết sự khác nhau giữa TCP và UDP trong mô hình OSI bảy tầng của mạng máy tính');
    expect(title.endsWith('…')).toBe(true);
    expect(title.length).toBeLessThanOrEqual(61);
    expect(title).toBe('Giải thích chi tiết sự khác nhau giữa TCP và UDP trong mô…');
  });
});
