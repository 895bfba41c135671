// The quiz screen's pure parts: the body of POST /v1/decks/{deck}/quizzes from the form, the
// countdown's text, what a key does, the answers sent, and which questions the result lists.
import type { QuizResult, QuizResultQuestion } from '../api/types';

/** storage's bounds (storage.quiz MAX_QUESTIONS, MIN/MAX_TIME_LIMIT_S): the form says them first. */
export const MAX_QUESTIONS = 100;
export const MAX_MINUTES = 180;
export const DEFAULT_QUESTIONS = 10;
export const DEFAULT_MINUTES = 5;

export interface QuizRequest {
  count: number;
  time_limit_s: number;
}

/** The start request from the form (questions; minutes, halves allowed), or the i18n key of what is wrong. */
export function quizRequest(count: string, minutes: string): { body: QuizRequest } | { error: 'quiz.countRange' | 'quiz.timeRange' } {
  const n = Number(count.trim());
  if (!Number.isInteger(n) || n < 1 || n > MAX_QUESTIONS) return { error: 'quiz.countRange' };
  const m = Number(minutes.trim().replace(',', '.'));
  const seconds = Math.round(m * 60);
  // The server's floor is 10 s; the form's is half a minute, the least a question needs.
  if (!Number.isFinite(m) || seconds < 30 || seconds > MAX_MINUTES * 60) return { error: 'quiz.timeRange' };
  return { body: { count: n, time_limit_s: seconds } };
}

/** "4:05", "0:09": the time left, rounded up (the clock shows 0:00 only once it is over). */
export function countdown(ms: number): string {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

/** The choice a key picks (1-4, as many as there are choices), or null. */
export function quizKeyChoice(key: string, choices: number): number | null {
  const digit = /^[1-9]$/.test(key) ? Number(key) : 0;
  return digit >= 1 && digit <= Math.min(4, choices) ? digit - 1 : null;
}

/** The body of POST /v1/quizzes/{id}:submit: one answer per picked question, unpicked ones left out. */
export function submitBody(picks: readonly (number | null)[]): { answers: { position: number; choice: number }[] } {
  const answers: { position: number; choice: number }[] = [];
  picks.forEach((choice, position) => {
    if (choice !== null) answers.push({ position, choice });
  });
  return { answers };
}

/** The questions the result lists under the score: answered wrong or left unanswered. */
export function missedQuestions(result: QuizResult): QuizResultQuestion[] {
  return (result.questions ?? []).filter((q) => !q.correct);
}

/** The time taken, "1:05" (int64 time_taken_ms comes as a string in proto3 JSON). */
export function takenLabel(result: Pick<QuizResult, 'time_taken_ms'>): string {
  const ms = Number(result.time_taken_ms ?? 0);
  return countdown(Number.isFinite(ms) ? ms : 0);
}

/** "2/3 (67 %)". */
export function scoreLabel(result: QuizResult): string {
  const total = result.question_count ?? 0;
  const right = result.correct ?? 0;
  return total ? `${right}/${total} (${Math.round((right / total) * 100)} %)` : '0/0';
}
