import { describe, expect, it } from 'vitest';
import { reasonKey } from '../api/errors';
import { dictionaries } from '../i18n';
import { parseHash, quizHref, quizResultHref } from '../router';
import { countdown, missedQuestions, quizKeyChoice, quizRequest, scoreLabel, submitBody, takenLabel } from './quiz';

describe('quizRequest', () => {
  it('sends the questions and the time in seconds', () => {
    expect(quizRequest('3', '5')).toEqual({ body: { count: 3, time_limit_s: 300 } });
    expect(quizRequest(' 100 ', '0,5')).toEqual({ body: { count: 100, time_limit_s: 30 } });
    expect(quizRequest('1', '180')).toEqual({ body: { count: 1, time_limit_s: 10800 } });
  });

  it('says what is out of range before anything is sent', () => {
    for (const count of ['0', '101', '2.5', '', 'abc']) expect(quizRequest(count, '5')).toEqual({ error: 'quiz.countRange' });
    for (const minutes of ['0', '0.2', '181', '', 'x']) expect(quizRequest('3', minutes)).toEqual({ error: 'quiz.timeRange' });
  });
});

describe('countdown', () => {
  it('shows minutes and seconds, rounded up, never below zero', () => {
    expect(countdown(245_000)).toBe('4:05');
    expect(countdown(8_001)).toBe('0:09');
    expect(countdown(60_000)).toBe('1:00');
    expect(countdown(0)).toBe('0:00');
    expect(countdown(-5_000)).toBe('0:00');
  });

  it('reads int64 time taken as proto3 JSON sends it (a string)', () => {
    expect(takenLabel({ time_taken_ms: '65000' })).toBe('1:05');
    expect(takenLabel({ time_taken_ms: 9000 })).toBe('0:09');
    expect(takenLabel({})).toBe('0:00');
  });
});

describe('quizKeyChoice', () => {
  it('picks with 1-4, only among the choices there are', () => {
    expect(['1', '2', '3', '4'].map((key) => quizKeyChoice(key, 4))).toEqual([0, 1, 2, 3]);
    expect(quizKeyChoice('5', 4)).toBeNull();
    expect(quizKeyChoice('0', 4)).toBeNull();
    expect(quizKeyChoice('3', 2)).toBeNull();
    expect(quizKeyChoice(' ', 4)).toBeNull();
  });
});

describe('submitBody and the result', () => {
  it('sends one answer per picked question, skipped ones left out', () => {
    expect(submitBody([2, null, 0])).toEqual({ answers: [{ position: 0, choice: 2 }, { position: 2, choice: 0 }] });
    expect(submitBody([null, null])).toEqual({ answers: [] });
  });

  it('lists the wrong and unanswered questions, and the score', () => {
    const result = {
      quiz_id: 'q',
      question_count: 3,
      correct: 2,
      questions: [
        { position: 0, correct: true, chosen: 1, answer: 1 },
        { position: 1, correct: false, chosen: -1, answer: 0 },
        { position: 2, correct: true, chosen: 3, answer: 3 },
      ],
    };
    expect(missedQuestions(result).map((q) => q.position)).toEqual([1]);
    expect(scoreLabel(result)).toBe('2/3 (67 %)');
    expect(scoreLabel({ quiz_id: 'q' })).toBe('0/0');
  });
});

describe('quiz routes', () => {
  it('round-trips a new quiz of a deck, a result and the list', () => {
    expect(parseHash(quizHref('d 1'))).toMatchObject({ page: 'quiz', deckId: 'd 1', quizId: '' });
    expect(parseHash(quizResultHref('abc'))).toMatchObject({ page: 'quiz', quizId: 'abc', deckId: '' });
    expect(parseHash(quizHref())).toMatchObject({ page: 'quiz', quizId: '', deckId: '' });
  });
});

describe('quiz text', () => {
  it('has every quiz key in both languages', () => {
    const keys = Object.keys(dictionaries.vi).filter((key) => key.startsWith('quiz.'));
    expect(keys.length).toBeGreaterThan(20);
    for (const key of keys) expect(dictionaries.en[key as keyof typeof dictionaries.en]).toBeTruthy();
  });

  it("says storage's quiz reasons in the UI's words", () => {
    for (const reason of ['NO_QUIZ_CARDS', 'QUIZ_SUBMITTED', 'QUIZ_OPEN']) expect(reasonKey(reason)).toBe(`reason.${reason}`);
  });
});
