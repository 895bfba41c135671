// The source viewer's two pieces of text work, kept pure so they are tested without a browser.

/** One extracted passage as ListFileChunks returns it (proto JSON: zero values may be absent). */
export interface FileChunk {
  chunk_id: string;
  chunk_index?: number;
  page?: number;
  heading?: string;
  text?: string;
  char_start?: number;
  char_end?: number;
}

export interface Segment {
  chunk: FileChunk;
  /** What of the passage to show: consecutive passages overlap, and the overlap is shown once. */
  text: string;
}

const sameSection = (a: FileChunk, b: FileChunk) => (a.page ?? 0) === (b.page ?? 0) && (a.heading ?? '') === (b.heading ?? '');

/**
 * The passages as continuous text. The chunker's windows overlap (by about 40 tokens), and their
 * character offsets are within their section, so a passage that starts inside the previous one of
 * the same section shows only what follows it. The cited passage is shown whole (it is what the
 * student checks), and the one before it stops where it starts.
 */
export function displaySegments(chunks: readonly FileChunk[], citedId = ''): Segment[] {
  const starts = chunks.map((c) => c.char_start ?? 0);
  const ends = chunks.map((c, i) => (c.char_end ?? 0) || starts[i] + (c.text ?? '').length);
  const from = [...starts];
  const to = [...ends];
  for (let i = 1; i < chunks.length; i++) {
    const overlaps = sameSection(chunks[i - 1], chunks[i]) && starts[i] > starts[i - 1] && starts[i] < ends[i - 1];
    if (!overlaps) continue;
    if (chunks[i].chunk_id === citedId) to[i - 1] = Math.min(to[i - 1], starts[i]);
    else from[i] = Math.max(from[i], ends[i - 1]);
  }
  return chunks.map((chunk, i) => {
    const text = chunk.text ?? '';
    // Offsets that do not fit the text (an older parser's rows): show the passage whole.
    if (ends[i] - starts[i] !== text.length) return { chunk, text };
    return { chunk, text: text.slice(Math.max(0, from[i] - starts[i]), Math.max(0, to[i] - starts[i])) };
  });
}

/** Text compared without whitespace, case or ligatures: pypdf and pdf.js space and join words differently. */
function normalise(text: string): string {
  return text.normalize('NFKC').toLowerCase().replace(/\s+/g, '');
}

// Characters of the passage's start and end looked for when the whole passage is not found as one.
const ANCHOR_CHARS = 40;

/**
 * Which of a PDF page's text items (pdf.js text layer strings, in order) hold the passage: the
 * indexes of every item the passage's text covers. When the page's text and the extracted passage
 * differ somewhere in the middle, the passage's start and end still mark the range between them.
 */
export function passageItems(items: readonly string[], passage: string): number[] {
  const owner: number[] = [];
  let page = '';
  items.forEach((item, index) => {
    const chars = normalise(item);
    page += chars;
    for (let i = 0; i < chars.length; i++) owner.push(index);
  });
  const wanted = normalise(passage);
  if (!wanted || !page) return [];
  let start = page.indexOf(wanted);
  let end = start + wanted.length;
  if (start < 0) {
    const k = Math.min(ANCHOR_CHARS, wanted.length);
    const head = page.indexOf(wanted.slice(0, k));
    const tail = page.indexOf(wanted.slice(-k), head < 0 ? 0 : head);
    if (head >= 0 && tail >= 0) [start, end] = [head, tail + k];
    else if (head >= 0) [start, end] = [head, Math.min(page.length, head + wanted.length)];
    else if (tail >= 0) [start, end] = [Math.max(0, tail + k - wanted.length), tail + k];
    else return [];
  }
  return [...new Set(owner.slice(start, end))];
}
