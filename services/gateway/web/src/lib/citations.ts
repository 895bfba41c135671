import type { Citation } from '../api/types';
import { viewerHref } from '../router';
import { fileFormat, locationLabel } from './location';

/** A citation with its number settled: the server's index, or its 1-based position when absent. */
export interface NumberedCitation extends Citation {
  index: number;
}

/** Number citations, keep the first of each number, sort by number. */
export function numberCitations(citations: readonly Citation[] | undefined): NumberedCitation[] {
  const byIndex = new Map<number, NumberedCitation>();
  (citations ?? []).forEach((citation, position) => {
    const index = citation.index && citation.index > 0 ? citation.index : position + 1;
    if (!byIndex.has(index)) byIndex.set(index, { ...citation, index });
  });
  return [...byIndex.values()].sort((a, b) => a.index - b.index);
}

export const CITE_PREFIX = '#cite-';

/** "#cite-3" -> 3, anything else -> null. */
export function citationIndexFromHref(href: string | undefined): number | null {
  if (!href || !href.startsWith(CITE_PREFIX)) return null;
  const rest = href.slice(CITE_PREFIX.length);
  return /^\d{1,4}$/.test(rest) ? Number(rest) : null;
}

// Fenced blocks (closed or still streaming) and inline code spans: markers inside stay literal.
const CODE = /(```[\s\S]*?(?:```|$)|~~~[\s\S]*?(?:~~~|$)|`[^`\n]*`)/g;
// "[1]", "[1, 2]", "[1,2,3]": not an escaped bracket, not a link "[1](...)" nor a definition "[1]:".
const MARKER = /(^|[^\\])\[(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\](?![(:[])/g;

/**
 * Turn the answer's inline markers into links "#cite-N" that the Markdown renderer shows as chips.
 * Only numbers that have a citation become links; the rest of the text is left exactly as it was.
 */
export function linkCitations(markdown: string, known: ReadonlySet<number>): string {
  if (known.size === 0) return markdown;
  return markdown
    .split(CODE)
    .map((part, i) => {
      if (i % 2 === 1) return part; // a code part (split keeps the captured separators at odd places)
      return part.replace(MARKER, (whole, before: string, list: string) => {
        const numbers = list.split(/\s*[,;]\s*/).map(Number);
        if (!numbers.every((n) => known.has(n))) return whole;
        return before + numbers.map((n) => `[${n}](${CITE_PREFIX}${n})`).join('');
      });
    })
    .join('');
}

/** Which citation numbers the answer text actually refers to, in order of first use. */
export function referencedIndexes(markdown: string, known: ReadonlySet<number>): number[] {
  const seen: number[] = [];
  const linked = linkCitations(markdown, known);
  for (const match of linked.matchAll(/\]\(#cite-(\d+)\)/g)) {
    const n = Number(match[1]);
    if (!seen.includes(n)) seen.push(n);
  }
  return seen;
}

/** "Slides.pdf · trang 3", "Bài 2.pptx · trang chiếu 5", "notes.md · Chương 1 > Ngăn xếp": a chip's label. */
export function citationLabel(citation: Citation, t: (key: string, vars?: Record<string, string | number>) => string): string {
  const name = citation.file_name || citation.file_id || '?';
  const where = locationLabel(fileFormat({ file_name: citation.file_name }), citation, t);
  return where ? `${name} · ${where}` : name;
}

/** The source viewer at this citation's place (#/view/<file>?chunk=<id>&page=<n>). */
export function citationHref(citation: Citation): string {
  return viewerHref(citation.file_id ?? '', citation.chunk_id ?? '', citation.page ?? 0);
}
