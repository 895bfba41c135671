// The study loop's pure parts: what a key does on the review screen, how a multiple-choice answer
// is marked, a deck's figures as the page shows them, and the body of POST /v1/decks.
import type { CardKind, CardSource, Deck, StudyCard } from '../api/types';
import { viewerHref } from '../router';
import type { HighlightPart } from './highlight';
import { fileFormat, locationLabel } from './location';

/** The four FSRS ratings, in the order of their keys 1-4 (storage's ReviewCard takes the name). */
export const RATINGS = ['again', 'hard', 'good', 'easy'] as const;
export type Rating = (typeof RATINGS)[number];

export const DECK_KINDS: readonly CardKind[] = ['CARD_KIND_FLASHCARD', 'CARD_KIND_CLOZE', 'CARD_KIND_MULTIPLE_CHOICE'];
/** chat's DeckService bound (MAX_SIZE): the server refuses past it, the form says so first. */
export const MAX_DECK_SIZE = 500;
export const DEFAULT_DECK_SIZE = 20;

export type ReviewAction = { type: 'reveal' } | { type: 'rate'; rating: Rating } | { type: 'choose'; index: number } | null;

/** What a key press does on the review screen: Space shows the back; 1-4 rate a revealed card,
 * or pick one of a multiple-choice card's choices before it is revealed. */
export function reviewKeyAction(key: string, revealed: boolean, choices: number): ReviewAction {
  if (key === ' ' || key === 'Spacebar') return revealed ? null : { type: 'reveal' };
  const digit = /^[1-4]$/.test(key) ? Number(key) : 0;
  if (!digit) return null;
  if (revealed) return { type: 'rate', rating: RATINGS[digit - 1] };
  return digit <= choices ? { type: 'choose', index: digit - 1 } : null;
}

/** A key typed into a field belongs to the field, never to the review screen. */
export function typingInto(target: EventTarget | null): boolean {
  const element = target as { tagName?: unknown; isContentEditable?: unknown } | null;
  const tag = typeof element?.tagName === 'string' ? element.tagName.toUpperCase() : '';
  return tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT' || element?.isContentEditable === true;
}

/** A focused button, link or disclosure keeps Space for itself (it presses it), as everywhere else. */
export function spaceBelongsTo(target: EventTarget | null): boolean {
  const element = target as { tagName?: unknown } | null;
  const tag = typeof element?.tagName === 'string' ? element.tagName.toUpperCase() : '';
  return tag === 'BUTTON' || tag === 'A' || tag === 'SUMMARY' || typingInto(target);
}

export type ChoiceMark = 'right' | 'wrong' | '';

/** How a choice looks once the card is revealed: the right one marked, a wrong pick marked too. */
export function choiceMark(choice: string, card: Pick<StudyCard, 'back'>, revealed: boolean, picked: number | null, index: number): ChoiceMark {
  if (!revealed) return '';
  if (choice === (card.back ?? '')) return 'right';
  return picked === index ? 'wrong' : '';
}

/** A deck's retention as a whole percentage, or '' before any card has been reviewed (the server
 * says 0 then, which is not "remembered nothing"). */
export function retentionPercent(deck: Deck): string {
  const reviewed = (deck.card_count ?? 0) - (deck.new_count ?? 0);
  if (reviewed <= 0) return '';
  return `${Math.round((deck.retention ?? 0) * 100)} %`;
}

export interface DeckForm {
  kind: CardKind;
  size: string;
  title: string;
  /** Every ready file, or only `fileIds`. */
  allFiles: boolean;
  fileIds: readonly string[];
}

export interface DeckRequest {
  kind: CardKind;
  size: number;
  title: string;
  file_ids: string[];
}

/** The body of POST /v1/decks from the form, or the i18n key of what is wrong with it. */
export function deckRequest(form: DeckForm): { body: DeckRequest } | { error: 'study.create.sizeRange' | 'study.create.pickSome' } {
  const size = Number(form.size.trim());
  if (!Number.isInteger(size) || size < 1 || size > MAX_DECK_SIZE) return { error: 'study.create.sizeRange' };
  if (!form.allFiles && form.fileIds.length === 0) return { error: 'study.create.pickSome' };
  // An empty list means "all the caller's ready files" to the server.
  return { body: { kind: form.kind, size, title: form.title.trim(), file_ids: form.allFiles ? [] : [...form.fileIds] } };
}

type Translate = (key: string, vars?: Record<string, string | number>) => string;

/** "notes.md · Chương 1 > Ngăn xếp", "slides.pptx · slide 3": where the card's passage is. */
export function sourceLabel(source: CardSource | undefined, t: Translate): string {
  if (!source) return '';
  const name = source.file_name || source.file_id || '';
  const place = locationLabel(fileFormat({ file_name: source.file_name }), { page: source.page, heading: source.heading }, t);
  return place ? `${name} · ${place}` : name;
}

/** The viewer opened at the card's passage (the link a citation opens, CitationPanel's). */
export function sourceHref(source: CardSource | undefined): string {
  return source?.file_id ? viewerHref(source.file_id, source.chunk_id ?? '', source.page ?? 0) : '';
}

/** The card's passage with its answer marked (its first place, case aside), so the student sees
 * where the answer comes from; unmarked when the passage does not hold it word for word. */
export function markAnswer(quote: string, answer: string): HighlightPart[] {
  const wanted = answer.trim().replace(/…$/, '').trim();
  const lowerQuote = quote.toLocaleLowerCase('vi');
  const lowerWanted = wanted.toLocaleLowerCase('vi');
  // Lower-casing that changes a text's length would put the mark off its words: mark nothing then.
  const at = wanted && lowerQuote.length === quote.length && lowerWanted.length === wanted.length ? lowerQuote.indexOf(lowerWanted) : -1;
  if (at < 0) return quote ? [{ text: quote, mark: false }] : [];
  const end = at + wanted.length;
  return [
    { text: quote.slice(0, at), mark: false },
    { text: quote.slice(at, end), mark: true },
    { text: quote.slice(end), mark: false },
  ].filter((part) => part.text);
}
