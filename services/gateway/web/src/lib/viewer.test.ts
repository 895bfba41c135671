import { describe, expect, it } from 'vitest';
import { displaySegments, passageItems, type FileChunk } from './viewer';

// One section's text cut into overlapping windows, as the storage chunker does.
const SECTION = 'Ngăn xếp vào sau ra trước. Hàng đợi vào trước ra trước. Cây nhị phân có hai con.';
function windowAt(id: string, start: number, end: number, extra: Partial<FileChunk> = {}): FileChunk {
  return { chunk_id: id, char_start: start, char_end: end, text: SECTION.slice(start, end), ...extra };
}

describe('displaySegments', () => {
  const chunks = [windowAt('a', 0, 40), windowAt('b', 27, 70), windowAt('c', 56, SECTION.length)];

  it('shows overlapping passages of a section as one continuous text', () => {
    const text = displaySegments(chunks).map((s) => s.text);
    expect(text.join('')).toBe(SECTION);
    expect(text[1].startsWith(SECTION.slice(40, 45))).toBe(true);
  });

  it('shows the cited passage whole, the one before it up to where it starts', () => {
    const text = displaySegments(chunks, 'b').map((s) => s.text);
    expect(text[1]).toBe(SECTION.slice(27, 70));
    expect(text[0]).toBe(SECTION.slice(0, 27));
    expect(text.join('')).toBe(SECTION);
  });

  it('leaves passages of different sections (slides, headings) alone', () => {
    const slides = [
      { chunk_id: 's1', page: 1, char_start: 0, char_end: 5, text: 'Slide' },
      { chunk_id: 's2', page: 2, char_start: 0, char_end: 3, text: 'Two' },
      { chunk_id: 's3', page: 2, heading: 'Other', char_start: 1, char_end: 4, text: 'wo!' },
    ];
    expect(displaySegments(slides).map((s) => s.text)).toEqual(['Slide', 'Two', 'wo!']);
  });

  it('shows a passage whole when its offsets do not fit its text', () => {
    const odd = [windowAt('a', 0, 40), { chunk_id: 'b', char_start: 20, char_end: 30, text: 'not ten chars long' }];
    expect(displaySegments(odd)[1].text).toBe('not ten chars long');
  });
});

describe('passageItems', () => {
  const items = ['Computer Networks, lecture 4', 'TCP opens a connection with a ', 'three-way', ' handshake: SYN, then', 'ACK.', 'Other line'];

  it('finds the text layer items holding the passage, whatever the spacing', () => {
    expect(passageItems(items, 'TCP opens a connection\nwith a three-way handshake: SYN, then ACK.')).toEqual([1, 2, 3, 4]);
  });

  it('marks from the start to the end of the passage when the middle differs', () => {
    const page = ['Title', 'The transport layer gives each application', 'its own channel: TCP opens a con-', 'nection', 'with a three-way handshake and then sends the data in order.', 'Footer'];
    const passage = 'The transport layer gives each application its own channel: TCP opens a connection with a three-way handshake and then sends the data in order.';
    expect(passageItems(page, passage)).toEqual([1, 2, 3, 4]);
  });

  it('folds case and ligatures; nothing is marked for text that is not on the page', () => {
    expect(passageItems(['The ﬁrst ﬁle'], 'the first file')).toEqual([0]);
    expect(passageItems(items, 'Nothing like this is on the page at all, not one bit')).toEqual([]);
    expect(passageItems([], 'x')).toEqual([]);
    expect(passageItems(items, '   ')).toEqual([]);
  });
});
