import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { ApiError } from '../api/errors';
import type { Deck, Quiz, QuizResult } from '../api/types';
import { ErrorBanner } from '../components/ErrorBanner';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { formatTime } from '../lib/format';
import {
  countdown,
  DEFAULT_MINUTES,
  DEFAULT_QUESTIONS,
  MAX_MINUTES,
  MAX_QUESTIONS,
  missedQuestions,
  quizKeyChoice,
  quizRequest,
  scoreLabel,
  submitBody,
  takenLabel,
} from '../lib/quiz';
import { sourceHref, sourceLabel, typingInto } from '../lib/study';
import { quizHref, quizResultHref, studyHref } from '../router';

const RESULTS_PAGE = 20;

/** "#/quiz?deck=<id>": a new quiz of the deck; "#/quiz/<id>": one result; "#/quiz": every result. */
export function QuizPage({ quizId, deckId }: { quizId: string; deckId: string }) {
  const { t } = useI18n();
  if (quizId) return <ResultScreen quizId={quizId} />;
  if (deckId) return <QuizScreen key={deckId} deckId={deckId} />;
  return (
    <section className="study-page quiz-page">
      <div className="study-header">
        <h1>{t('quiz.allResults')}</h1>
        <a href={studyHref()}>{t('study.back')}</a>
      </div>
      <PastResults deckId="" />
    </section>
  );
}

function QuizScreen({ deckId }: { deckId: string }) {
  const { client } = useApp();
  const { t } = useI18n();
  const [deck, setDeck] = useState<Deck | null>(null);
  const [count, setCount] = useState(String(DEFAULT_QUESTIONS));
  const [minutes, setMinutes] = useState(String(DEFAULT_MINUTES));
  const [invalid, setInvalid] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [quiz, setQuiz] = useState<Quiz | null>(null);
  const [result, setResult] = useState<QuizResult | null>(null);
  // Bumped after each submit so the past results below are asked again.
  const [finished, setFinished] = useState(0);

  useEffect(() => {
    client
      .get<Deck>(`/v1/decks/${encodeURIComponent(deckId)}`)
      .then(setDeck)
      .catch(setError);
  }, [client, deckId]);

  const start = async (event: FormEvent) => {
    event.preventDefault();
    const built = quizRequest(count, minutes);
    if ('error' in built) {
      setInvalid(t(built.error, { max: built.error === 'quiz.countRange' ? MAX_QUESTIONS : MAX_MINUTES }));
      return;
    }
    setInvalid('');
    setError(null);
    setBusy(true);
    try {
      setQuiz(await client.json<Quiz>('POST', `/v1/decks/${encodeURIComponent(deckId)}/quizzes`, { body: built.body }));
      setResult(null);
    } catch (caught) {
      setError(caught);
    } finally {
      setBusy(false);
    }
  };

  const done = (scored: QuizResult) => {
    setQuiz(null);
    setResult(scored);
    setFinished((n) => n + 1);
  };

  const title = deck?.title || deck?.deck_id || '';
  return (
    <section className="study-page quiz-page">
      <div className="study-header">
        <h1>{title ? t('quiz.titleDeck', { title }) : t('quiz.title')}</h1>
        <a href={studyHref()} data-testid="quiz-back">
          {t('study.back')}
        </a>
      </div>
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
      {quiz ? (
        <TakeQuiz quiz={quiz} onDone={done} />
      ) : (
        <>
          {result && <ResultView result={result} />}
          {/* noValidate: the bounds are checked by quizRequest and said in the UI's language. */}
          <form className="card deck-form" onSubmit={(e) => void start(e)} noValidate data-testid="quiz-form" aria-busy={busy}>
            <h2>{result ? t('quiz.again') : t('quiz.new')}</h2>
            <div className="deck-form-fields">
              <label>
                {t('quiz.count')}
                <input type="number" min={1} max={MAX_QUESTIONS} value={count} onChange={(e) => setCount(e.target.value)} data-testid="quiz-count" />
              </label>
              <label>
                {t('quiz.minutes')}
                <input
                  type="number"
                  min={0.5}
                  max={MAX_MINUTES}
                  step={0.5}
                  value={minutes}
                  onChange={(e) => setMinutes(e.target.value)}
                  data-testid="quiz-minutes"
                />
              </label>
            </div>
            {invalid && (
              <div className="error-banner" role="alert">
                <span className="error-text">{invalid}</span>
              </div>
            )}
            <button type="submit" className="primary" disabled={busy} data-testid="quiz-start">
              {busy ? t('quiz.starting') : t('quiz.start')}
            </button>
          </form>
          <h2>{t('quiz.past')}</h2>
          <PastResults key={finished} deckId={deckId} />
        </>
      )}
    </section>
  );
}

function TakeQuiz({ quiz, onDone }: { quiz: Quiz; onDone: (result: QuizResult) => void }) {
  const { client } = useApp();
  const { t } = useI18n();
  const questions = quiz.questions ?? [];
  const [index, setIndex] = useState(0);
  const [picks, setPicks] = useState<(number | null)[]>(() => questions.map(() => null));
  const [now, setNow] = useState(() => Date.now());
  const [error, setError] = useState<unknown>(null);
  const [submitting, setSubmitting] = useState(false);
  // The local clock's deadline, from the time limit rather than the server's deadline: a device
  // clock set wrong would otherwise show the wrong time left (the server scores by its own clock).
  const deadline = useRef(Date.now() + (quiz.time_limit_s ?? 0) * 1000);
  const sent = useRef(false);
  const picksRef = useRef(picks);
  picksRef.current = picks;

  const submit = useCallback(async () => {
    if (sent.current) return;
    sent.current = true;
    setSubmitting(true);
    try {
      onDone(await client.json<QuizResult>('POST', `/v1/quizzes/${encodeURIComponent(quiz.quiz_id)}:submit`, { body: submitBody(picksRef.current) }));
    } catch (caught) {
      if (caught instanceof ApiError && caught.reason === 'QUIZ_SUBMITTED') {
        // A retry of a submit whose answer was lost on the way: the server scored the first one.
        try {
          onDone(await client.get<QuizResult>(`/v1/quizzes/${encodeURIComponent(quiz.quiz_id)}`));
          return;
        } catch (again) {
          caught = again;
        }
      }
      // A network failure: the student may try again (the server scores one submit only).
      sent.current = false;
      setError(caught);
    } finally {
      setSubmitting(false);
    }
  }, [client, onDone, quiz.quiz_id]);

  const left = deadline.current - now;
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), 250);
    return () => window.clearInterval(timer);
  }, []);
  useEffect(() => {
    if (left <= 0) void submit();
  }, [left, submit]);

  const pick = useCallback(
    (choice: number) => {
      if (sent.current) return;
      const next = picks.map((p, i) => (i === index ? choice : p));
      setPicks(next);
      picksRef.current = next;
      if (index + 1 < questions.length) setIndex(index + 1);
      else void submit();
    },
    [index, picks, questions.length, submit],
  );

  const question = questions[index];
  const choices = question?.choices ?? [];
  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      if (event.ctrlKey || event.metaKey || event.altKey || typingInto(event.target)) return;
      const choice = quizKeyChoice(event.key, choices.length);
      if (choice === null) return;
      event.preventDefault();
      pick(choice);
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [choices.length, pick]);

  if (!question) return null;
  return (
    <div className="quiz-run" data-testid="quiz-run">
      <div className="quiz-status">
        <span data-testid="quiz-progress">{t('quiz.progress', { n: index + 1, total: questions.length })}</span>
        {/* role="timer": not announced on every tick (no live region). */}
        <span className="quiz-timer" role="timer" data-testid="quiz-timer">
          {t('quiz.timeLeft')}: {countdown(left)}
        </span>
      </div>
      <ErrorBanner error={error} onRetry={() => void submit()} />
      <article className="review-card card" data-testid="quiz-question" data-position={index}>
        <p className="review-front" id="quiz-front">
          {question.front}
        </p>
        <ol className="choices" aria-labelledby="quiz-front">
          {choices.map((choice, i) => (
            <li key={`${i}:${choice}`} className="choice">
              <button type="button" onClick={() => pick(i)} aria-keyshortcuts={String(i + 1)} disabled={submitting} data-testid="quiz-choice">
                <span aria-hidden="true">{i + 1}. </span>
                {choice}
              </button>
            </li>
          ))}
        </ol>
      </article>
      <div className="review-actions">
        <span className="muted small">{t('quiz.keyHint')}</span>
        {index + 1 < questions.length && (
          <button type="button" className="ghost" onClick={() => setIndex(index + 1)} data-testid="quiz-skip">
            {t('quiz.skip')}
          </button>
        )}
        <button type="button" className="primary" onClick={() => void submit()} disabled={submitting} data-testid="quiz-submit">
          {submitting ? t('quiz.submitting') : t('quiz.submit')}
        </button>
      </div>
    </div>
  );
}

function ResultView({ result }: { result: QuizResult }) {
  const { t } = useI18n();
  const missed = missedQuestions(result);
  return (
    <div className="card quiz-result" data-testid="quiz-result" data-quiz-id={result.quiz_id}>
      <h2>
        {t('quiz.score')}: <span data-testid="quiz-score">{scoreLabel(result)}</span>
      </h2>
      <p data-testid="quiz-summary">
        {t('quiz.summary', { correct: result.correct ?? 0, wrong: result.wrong ?? 0, unanswered: result.unanswered ?? 0, taken: takenLabel(result) })}
      </p>
      {result.late && (
        <p className="notice" role="status">
          {t('quiz.late')}
        </p>
      )}
      {missed.length === 0 ? (
        <p>{t('quiz.allRight')}</p>
      ) : (
        <>
          <h3>{t('quiz.missed')}</h3>
          <ol className="quiz-missed">
            {missed.map((q) => {
              const href = sourceHref(q.source);
              const chosen = q.chosen ?? -1;
              return (
                <li key={q.position ?? 0} data-testid="quiz-missed" data-position={q.position ?? 0}>
                  <p className="review-front">{q.front}</p>
                  <p className="small">
                    {t('quiz.yourAnswer')}: <span data-testid="quiz-chosen">{chosen >= 0 ? (q.choices ?? [])[chosen] : t('quiz.noAnswer')}</span>
                  </p>
                  <p className="small">
                    {t('quiz.rightAnswer')}: <strong data-testid="quiz-answer">{(q.choices ?? [])[q.answer ?? 0]}</strong>
                  </p>
                  <p className="review-source small">
                    {t('study.source')}: {sourceLabel(q.source, t)}{' '}
                    {href && (
                      <a href={href} data-testid="quiz-source">
                        {t('study.openSource')}
                      </a>
                    )}
                  </p>
                </li>
              );
            })}
          </ol>
        </>
      )}
    </div>
  );
}

function ResultScreen({ quizId }: { quizId: string }) {
  const { client } = useApp();
  const { t } = useI18n();
  const [result, setResult] = useState<QuizResult | null>(null);
  const [error, setError] = useState<unknown>(null);

  const load = useCallback(async () => {
    try {
      setResult(await client.get<QuizResult>(`/v1/quizzes/${encodeURIComponent(quizId)}`));
      setError(null);
    } catch (caught) {
      setError(caught);
    }
  }, [client, quizId]);

  useEffect(() => {
    void load();
  }, [load]);

  const title = result?.deck_title || '';
  return (
    <section className="study-page quiz-page">
      <div className="study-header">
        <h1>{title ? t('quiz.titleDeck', { title }) : t('quiz.title')}</h1>
        <a href={result?.deck_id ? quizHref(result.deck_id) : quizHref()}>{result?.deck_id ? t('quiz.again') : t('quiz.allResults')}</a>
      </div>
      <ErrorBanner error={error} onRetry={() => void load()} />
      {!result && !error && <p className="muted">{t('common.loading')}</p>}
      {result && <ResultView result={result} />}
    </section>
  );
}

function PastResults({ deckId }: { deckId: string }) {
  const { client } = useApp();
  const { t, lang } = useI18n();
  const [results, setResults] = useState<QuizResult[]>([]);
  const [next, setNext] = useState('');
  const [loaded, setLoaded] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const load = useCallback(
    async (token: string) => {
      try {
        const page = await client.get<{ results?: QuizResult[]; next_page_token?: string }>('/v1/quizzes', {
          deck_id: deckId || undefined,
          page_size: RESULTS_PAGE,
          page_token: token || undefined,
        });
        setResults((current) => (token ? [...current, ...(page.results ?? [])] : (page.results ?? [])));
        setNext(page.next_page_token ?? '');
        setError(null);
      } catch (caught) {
        setError(caught);
      } finally {
        setLoaded(true);
      }
    },
    [client, deckId],
  );

  useEffect(() => {
    void load('');
  }, [load]);

  return (
    <>
      <ErrorBanner error={error} onRetry={() => void load('')} />
      {loaded && results.length === 0 && !error && <p className="muted">{t('quiz.noPast')}</p>}
      <ul className="deck-list" data-testid="quiz-results">
        {results.map((r) => (
          <li key={r.quiz_id} className="deck-row" data-testid="quiz-result-row" data-quiz-id={r.quiz_id}>
            <div className="deck-head">
              <span className="deck-title">{r.deck_title || t('quiz.deletedDeck')}</span>
              <span className="muted small">{formatTime(r.submitted_at, lang)}</span>
            </div>
            <p className="small">
              <strong data-testid="quiz-row-score">{scoreLabel(r)}</strong> ·{' '}
              {t('quiz.summary', { correct: r.correct ?? 0, wrong: r.wrong ?? 0, unanswered: r.unanswered ?? 0, taken: takenLabel(r) })}{' '}
              <a href={quizResultHref(r.quiz_id)} data-testid="quiz-result-open">
                {t('quiz.open')}
                <span className="visually-hidden">: {formatTime(r.submitted_at, lang)}</span>
              </a>
            </p>
          </li>
        ))}
      </ul>
      {next && (
        <button type="button" className="ghost" onClick={() => void load(next)} data-testid="quiz-more">
          {t('quiz.more')}
        </button>
      )}
    </>
  );
}
