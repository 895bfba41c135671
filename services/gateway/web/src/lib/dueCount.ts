import { useEffect, useState } from 'react';
import type { ApiClient } from '../api/client';
import type { DueCards } from '../api/types';

// The nav's count of cards due: asked again whenever the Study page changed it (a review, a deck
// made or deleted) through one window event, so the nav and the page share no state.
const DUE_CHANGED = 'sa:due-changed';

/** Tell the nav that the number of due cards may have changed. */
export function dueChanged(): void {
  window.dispatchEvent(new Event(DUE_CHANGED));
}

/** Cards due now across every deck (null until known, or when the server could not say). Asked on
 * mount, on every navigation (`routeKey`), when the window gets focus back (learning steps make
 * cards due while the student is away) and after dueChanged(). */
export function useDueCount(client: ApiClient, routeKey: unknown): number | null {
  const [due, setDue] = useState<number | null>(null);
  const [asked, setAsked] = useState(0);
  useEffect(() => {
    const again = () => setAsked((n) => n + 1);
    window.addEventListener(DUE_CHANGED, again);
    window.addEventListener('focus', again);
    return () => {
      window.removeEventListener(DUE_CHANGED, again);
      window.removeEventListener('focus', again);
    };
  }, []);
  useEffect(() => {
    const controller = new AbortController();
    client
      // page_size 1: only the count is wanted (the server counts past the page).
      .get<DueCards>('/v1/reviews:due', { page_size: 1 }, controller.signal)
      .then((answer) => setDue(answer.due_count ?? 0))
      // The nav is no place for an error: the Study page says it when the student opens it.
      .catch(() => undefined);
    return () => controller.abort();
  }, [client, routeKey, asked]);
  return due;
}
