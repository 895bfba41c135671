import { useEffect, useState } from 'react';

// Hash routes ("#/chat/<id>?m=<message>"): the gateway serves one index.html, no server-side routes needed.
export interface Route {
  page: 'chat' | 'documents' | 'dashboard' | 'viewer' | 'study' | 'quiz';
  sessionId: string;
  focusMessageId: string;
  /** The source viewer's file, cited chunk and page ("#/view/<file>?chunk=<id>&page=<n>"). */
  fileId?: string;
  chunkId?: string;
  pageNumber?: number;
  /** The Study page's screen: its decks, or the review of due cards ("#/study/review?deck=<id>"). */
  studyView?: 'decks' | 'review';
  /** The review's deck; empty: every deck's due cards. The quiz page's deck too. */
  deckId?: string;
  /** The quiz page: a new quiz of `deckId` ("#/quiz?deck=<id>"), one result ("#/quiz/<id>"), or
   * every past result ("#/quiz"). */
  quizId?: string;
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
  if (parts[0] === 'study') {
    const review = parts[1] === 'review';
    return { page: 'study', sessionId: '', focusMessageId: '', studyView: review ? 'review' : 'decks', deckId: review ? (params.get('deck') ?? '') : '' };
  }
  if (parts[0] === 'quiz') return { page: 'quiz', sessionId: '', focusMessageId: '', quizId: parts[1] ?? '', deckId: params.get('deck') ?? '' };
  if (parts[0] === 'view' && parts[1]) {
    const pageNumber = Number(params.get('page') ?? 0);
    return {
      page: 'viewer',
      sessionId: '',
      focusMessageId: '',
      fileId: parts[1],
      chunkId: params.get('chunk') ?? '',
      pageNumber: Number.isInteger(pageNumber) && pageNumber > 0 ? pageNumber : 0,
    };
  }
  return { page: 'chat', sessionId: parts[0] === 'chat' ? (parts[1] ?? '') : '', focusMessageId: params.get('m') ?? '' };
}

export function chatHref(sessionId: string, messageId = ''): string {
  const base = sessionId ? `#/chat/${encodeURIComponent(sessionId)}` : '#/chat';
  return messageId ? `${base}?m=${encodeURIComponent(messageId)}` : base;
}

export function viewerHref(fileId: string, chunkId = '', page = 0): string {
  const params = new URLSearchParams();
  if (chunkId) params.set('chunk', chunkId);
  if (page > 0) params.set('page', String(page));
  const query = params.toString();
  return `#/view/${encodeURIComponent(fileId)}${query ? `?${query}` : ''}`;
}

export function studyHref(review = false, deckId = ''): string {
  if (!review) return '#/study';
  return deckId ? `#/study/review?deck=${encodeURIComponent(deckId)}` : '#/study/review';
}

/** A new quiz of the deck, or (no deck) the list of past results. */
export function quizHref(deckId = ''): string {
  return deckId ? `#/quiz?deck=${encodeURIComponent(deckId)}` : '#/quiz';
}

export function quizResultHref(quizId: string): string {
  return `#/quiz/${encodeURIComponent(quizId)}`;
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
