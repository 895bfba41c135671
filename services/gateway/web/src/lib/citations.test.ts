import { describe, expect, it } from 'vitest';
import { translate } from '../i18n';
import { citationHref, citationIndexFromHref, citationLabel, linkCitations, numberCitations, referencedIndexes } from './citations';

const known = new Set([1, 2, 3]);

describe('numberCitations', () => {
  it('keeps server numbers, fills missing ones by position, drops duplicates, sorts', () => {
    const result = numberCitations([
      { index: 2, file_id: 'b' },
      { file_id: 'x' }, // no index: position 2 -> number 2, already taken -> dropped
      { index: 1, file_id: 'a' },
      { index: 2, file_id: 'dup' },
      { file_id: 'e' }, // position 5
    ]);
    expect(result.map((c) => [c.index, c.file_id])).toEqual([
      [1, 'a'],
      [2, 'b'],
      [5, 'e'],
    ]);
  });

  it('treats an absent list as empty', () => {
    expect(numberCitations(undefined)).toEqual([]);
  });
});

describe('linkCitations', () => {
  it('links known markers to #cite-N', () => {
    expect(linkCitations('TCP is reliable [1] and ordered [2].', known)).toBe(
      'TCP is reliable [1](#cite-1) and ordered [2](#cite-2).',
    );
  });

  it('splits grouped markers into one link each', () => {
    expect(linkCitations('See [1, 3] and [2;3].', known)).toBe('See [1](#cite-1)[3](#cite-3) and [2](#cite-2)[3](#cite-3).');
  });

  it('leaves unknown numbers, links, definitions and escaped brackets alone', () => {
    const text = 'Array a[9], link [1](http://x), def\n\n[2]: http://y\n\nescaped \\[3] and [4]';
    expect(linkCitations(text, known)).toBe(text);
  });

  it('does not touch code spans or fenced blocks, even an unclosed streaming fence', () => {
    const text = 'Use `arr[1]` here [1]\n\n```py\nx = a[2]\n```\nthen [2]\n\n```\nb[3]';
    expect(linkCitations(text, known)).toBe(
      'Use `arr[1]` here [1](#cite-1)\n\n```py\nx = a[2]\n```\nthen [2](#cite-2)\n\n```\nb[3]',
    );
  });

  it('is the identity when there are no citations', () => {
    expect(linkCitations('a [1] b', new Set())).toBe('a [1] b');
  });

  it('links a marker at the very start of the text', () => {
    expect(linkCitations('[3] opens', known)).toBe('[3](#cite-3) opens');
  });
});

describe('referencedIndexes', () => {
  it('lists the numbers used, in order of first use', () => {
    expect(referencedIndexes('b [2] a [1] again [2] and [7]', known)).toEqual([2, 1]);
  });
});

describe('citationIndexFromHref', () => {
  it('reads only our own #cite-N anchors', () => {
    expect(citationIndexFromHref('#cite-12')).toBe(12);
    expect(citationIndexFromHref('#cite-x')).toBeNull();
    expect(citationIndexFromHref('javascript:alert(1)')).toBeNull();
    expect(citationIndexFromHref(undefined)).toBeNull();
  });
});

describe('citationLabel', () => {
  const vi = (key: string, vars?: Record<string, string | number>) => translate('vi', key, vars);
  const en = (key: string, vars?: Record<string, string | number>) => translate('en', key, vars);
  it('says page for a PDF and slide for a PPTX, in the UI language', () => {
    expect(citationLabel({ file_name: 'Mạng máy tính.pdf', page: 4 }, vi)).toBe('Mạng máy tính.pdf · trang 4');
    expect(citationLabel({ file_name: 'Mạng máy tính.pdf', page: 4 }, en)).toBe('Mạng máy tính.pdf · page 4');
    expect(citationLabel({ file_name: 'Bài 2.PPTX', page: 5, heading: 'TCP' }, vi)).toBe('Bài 2.PPTX · trang chiếu 5');
    expect(citationLabel({ file_name: 'Bài 2.pptx', page: 5 }, en)).toBe('Bài 2.pptx · slide 5');
  });
  it('gives DOCX, Markdown and text files their heading path, or the file alone', () => {
    expect(citationLabel({ file_name: 'notes.docx', heading: 'Chương 1 > Ngăn xếp' }, vi)).toBe('notes.docx · Chương 1 > Ngăn xếp');
    expect(citationLabel({ file_name: 'notes.md', page: 0 }, en)).toBe('notes.md');
    expect(citationLabel({ file_id: 'f9' }, en)).toBe('f9');
  });
});

describe('citationHref', () => {
  it('opens the viewer at the cited chunk and page', () => {
    expect(citationHref({ file_id: 'f 1', chunk_id: 'c2', page: 3 })).toBe('#/view/f%201?chunk=c2&page=3');
    expect(citationHref({ file_id: 'f1' })).toBe('#/view/f1');
  });
});
