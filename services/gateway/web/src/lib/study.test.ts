import { describe, expect, it } from 'vitest';
import { translate } from '../i18n';
import { parseHash, studyHref } from '../router';
import { choiceMark, deckRequest, markAnswer, retentionPercent, reviewKeyAction, sourceHref, sourceLabel, spaceBelongsTo, typingInto } from './study';

const t = (key: string, vars?: Record<string, string | number>) => translate('vi', key, vars);

describe('reviewKeyAction', () => {
  it('turns the card with Space, once', () => {
    expect(reviewKeyAction(' ', false, 0)).toEqual({ type: 'reveal' });
    expect(reviewKeyAction(' ', true, 0)).toBeNull();
  });

  it('rates a revealed card with 1-4, in the order again, hard, good, easy', () => {
    expect(['1', '2', '3', '4'].map((key) => reviewKeyAction(key, true, 0))).toEqual([
      { type: 'rate', rating: 'again' },
      { type: 'rate', rating: 'hard' },
      { type: 'rate', rating: 'good' },
      { type: 'rate', rating: 'easy' },
    ]);
    expect(reviewKeyAction('5', true, 0)).toBeNull();
    expect(reviewKeyAction('0', true, 4)).toBeNull();
  });

  it('never rates a card whose back is not shown yet', () => {
    expect(reviewKeyAction('3', false, 0)).toBeNull();
  });

  it('picks a multiple-choice answer before the card is revealed', () => {
    expect(reviewKeyAction('2', false, 4)).toEqual({ type: 'choose', index: 1 });
    expect(reviewKeyAction('4', false, 3)).toBeNull();
  });
});

describe('typingInto', () => {
  it('leaves keys typed into a field to the field', () => {
    const element = (tagName: string, isContentEditable = false) => ({ tagName, isContentEditable }) as unknown as EventTarget;
    expect(typingInto(element('INPUT'))).toBe(true);
    expect(typingInto(element('TEXTAREA'))).toBe(true);
    expect(typingInto(element('DIV', true))).toBe(true);
    expect(typingInto(element('BUTTON'))).toBe(false);
    expect(typingInto(null)).toBe(false);
  });

  it('leaves Space to a focused button or link, which it presses', () => {
    const element = (tagName: string) => ({ tagName }) as unknown as EventTarget;
    expect(spaceBelongsTo(element('BUTTON'))).toBe(true);
    expect(spaceBelongsTo(element('A'))).toBe(true);
    expect(spaceBelongsTo(element('INPUT'))).toBe(true);
    expect(spaceBelongsTo(element('BODY'))).toBe(false);
    expect(spaceBelongsTo(null)).toBe(false);
  });
});

describe('choiceMark', () => {
  const card = { back: 'Ngăn xếp' };
  it('marks nothing before the answer', () => {
    expect(choiceMark('Ngăn xếp', card, false, null, 0)).toBe('');
  });
  it('marks the right choice, and a wrong pick', () => {
    expect(choiceMark('Ngăn xếp', card, true, 1, 0)).toBe('right');
    expect(choiceMark('Hàng đợi', card, true, 1, 1)).toBe('wrong');
    expect(choiceMark('Cây', card, true, 1, 2)).toBe('');
    expect(choiceMark('Ngăn xếp', card, true, 0, 0)).toBe('right');
  });
});

describe('retentionPercent', () => {
  it('says nothing before any review (the server sends 0 then)', () => {
    expect(retentionPercent({ deck_id: 'd', card_count: 5, new_count: 5, retention: 0 })).toBe('');
  });
  it('rounds to a whole percentage once reviewed', () => {
    expect(retentionPercent({ deck_id: 'd', card_count: 5, new_count: 2, retention: 0.6666 })).toBe('67 %');
    expect(retentionPercent({ deck_id: 'd', card_count: 5, new_count: 4 })).toBe('0 %');
  });
});

describe('deckRequest', () => {
  const form = { kind: 'CARD_KIND_CLOZE' as const, size: '20', title: '  Chương 1 ', allFiles: true, fileIds: ['a'] };
  it('sends no file ids for "all ready files"', () => {
    expect(deckRequest(form)).toEqual({ body: { kind: 'CARD_KIND_CLOZE', size: 20, title: 'Chương 1', file_ids: [] } });
  });
  it('sends the chosen files', () => {
    expect(deckRequest({ ...form, allFiles: false, fileIds: ['a', 'b'] })).toEqual({
      body: { kind: 'CARD_KIND_CLOZE', size: 20, title: 'Chương 1', file_ids: ['a', 'b'] },
    });
  });
  it('refuses a size outside 1..500 and an empty choice', () => {
    for (const size of ['0', '501', '2.5', '', 'abc']) expect(deckRequest({ ...form, size })).toEqual({ error: 'study.create.sizeRange' });
    expect(deckRequest({ ...form, size: '500' })).toHaveProperty('body');
    expect(deckRequest({ ...form, allFiles: false, fileIds: [] })).toEqual({ error: 'study.create.pickSome' });
  });
});

describe('a card source', () => {
  it('says where the passage is the way its format counts', () => {
    expect(sourceLabel({ file_name: 'bai-giang.pdf', page: 3 }, t)).toBe('bai-giang.pdf · trang 3');
    expect(sourceLabel({ file_name: 'slides.pptx', page: 2, heading: 'Ngăn xếp' }, t)).toBe('slides.pptx · trang chiếu 2');
    expect(sourceLabel({ file_name: 'ghi-chu.md', heading: 'Chương 1 > Ngăn xếp' }, t)).toBe('ghi-chu.md · Chương 1 > Ngăn xếp');
    expect(sourceLabel({ file_name: 'ghi-chu.txt' }, t)).toBe('ghi-chu.txt');
    expect(sourceLabel(undefined, t)).toBe('');
  });
  it('opens the viewer at its chunk and page', () => {
    expect(sourceHref({ file_id: 'f 1', chunk_id: 'c1', page: 4 })).toBe('#/view/f%201?chunk=c1&page=4');
    expect(sourceHref({ file_id: 'f1', chunk_id: 'c1' })).toBe('#/view/f1?chunk=c1');
    expect(sourceHref({ chunk_id: 'c1' })).toBe('');
  });
});

describe('study routes', () => {
  it('parse back to what made them', () => {
    expect(parseHash(studyHref())).toMatchObject({ page: 'study', studyView: 'decks', deckId: '' });
    expect(parseHash(studyHref(true))).toMatchObject({ page: 'study', studyView: 'review', deckId: '' });
    expect(parseHash(studyHref(true, 'd/1'))).toMatchObject({ page: 'study', studyView: 'review', deckId: 'd/1' });
  });
});

describe('markAnswer', () => {
  const quote = 'Ngăn xếp là cấu trúc dữ liệu vào sau ra trước. Hàng đợi vào trước ra trước.';
  it('marks where the answer is, case aside', () => {
    expect(markAnswer(quote, 'Cấu trúc dữ liệu vào sau ra trước')).toEqual([
      { text: 'Ngăn xếp là ', mark: false },
      { text: 'cấu trúc dữ liệu vào sau ra trước', mark: true },
      { text: '. Hàng đợi vào trước ra trước.', mark: false },
    ]);
    expect(markAnswer(quote, 'Ngăn xếp')[0]).toEqual({ text: 'Ngăn xếp', mark: true });
    expect(markAnswer(quote, 'cấu trúc dữ liệu…').find((p) => p.mark)?.text).toBe('cấu trúc dữ liệu');
  });
  it('marks nothing when the passage does not hold the answer word for word', () => {
    expect(markAnswer(quote, 'Cây nhị phân')).toEqual([{ text: quote, mark: false }]);
    expect(markAnswer(quote, '  ')).toEqual([{ text: quote, mark: false }]);
    expect(markAnswer('', 'x')).toEqual([]);
  });
});
