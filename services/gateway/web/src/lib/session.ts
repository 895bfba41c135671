// A new chat's session, made by the web app before its first question is sent, so that stopping
// the first answer never loses the chat from view; and the question of an answer that never
// finished, kept per session so a reload puts it back in the box.

/** A short session title from the first question (as chat's make_title does): its first words,
 * cut at a word boundary. */
export function sessionTitle(question: string, maxChars = 60): string {
  const words = question.split(/\s+/).filter(Boolean).join(' ').replace(/^[ ?!.,;:]+|[ ?!.,;:]+$/g, '');
  if (words.length <= maxChars) return words || 'New chat';
  const head = words.slice(0, maxChars);
  const space = head.lastIndexOf(' ');
  const cut = space > 0 ? head.slice(0, space) : head;
  return `${cut.replace(/[ ,;:]+$/, '')}…`;
}

const UNSENT_PREFIX = 'sa.unsent.';

/** The question of a session whose answer did not finish (stopped, failed), or ''. */
export function unsentQuestion(sessionId: string): string {
  try {
    return localStorage.getItem(UNSENT_PREFIX + sessionId) ?? '';
  } catch {
    return '';
  }
}

export function keepUnsentQuestion(sessionId: string, question: string): void {
  try {
    if (question) localStorage.setItem(UNSENT_PREFIX + sessionId, question);
    else localStorage.removeItem(UNSENT_PREFIX + sessionId);
  } catch {
    // No storage (private mode): the question is only lost on reload.
  }
}
