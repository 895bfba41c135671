import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { ApiError } from '../api/errors';
import type { CardKind, Deck, DueCards, StoredFile, StudyCard } from '../api/types';
import { DeckCards } from '../components/DeckCards';
import { ErrorBanner } from '../components/ErrorBanner';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { dueChanged } from '../lib/dueCount';
import { formatTime, newestFirst } from '../lib/format';
import {
  choiceMark,
  DECK_KINDS,
  DEFAULT_DECK_SIZE,
  deckRequest,
  markAnswer,
  MAX_DECK_SIZE,
  RATINGS,
  retentionPercent,
  reviewKeyAction,
  sourceHref,
  sourceLabel,
  spaceBelongsTo,
  typingInto,
  type Rating,
} from '../lib/study';
import { quizHref, studyHref } from '../router';

// How many due cards one request brings; the queue is asked again after every review.
const QUEUE_SIZE = 50;

export function StudyPage({ view, deckId }: { view: 'decks' | 'review'; deckId: string }) {
  return view === 'review' ? <ReviewScreen deckId={deckId} /> : <DecksScreen />;
}

function DecksScreen() {
  const { client } = useApp();
  const { t, lang } = useI18n();
  const [decks, setDecks] = useState<Deck[]>([]);
  const [due, setDue] = useState(0);
  const [loaded, setLoaded] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const load = useCallback(async () => {
    try {
      const [listed, dueNow] = await Promise.all([
        client.get<{ decks?: Deck[] }>('/v1/decks'),
        client.get<DueCards>('/v1/reviews:due', { page_size: 1 }),
      ]);
      setDecks(newestFirst(listed.decks ?? [], (d) => d.created_at));
      setDue(dueNow.due_count ?? 0);
      setError(null);
    } catch (caught) {
      setError(caught);
    } finally {
      setLoaded(true);
    }
  }, [client]);

  useEffect(() => {
    void load();
  }, [load]);

  const changed = () => {
    dueChanged();
    void load();
  };

  const remove = async (deck: Deck) => {
    if (!window.confirm(t('study.confirmDelete', { title: deck.title || deck.deck_id }))) return;
    try {
      await client.json('DELETE', `/v1/decks/${encodeURIComponent(deck.deck_id)}`);
    } catch (caught) {
      // Gone already (another tab deleted it): what the student wanted.
      if (!(caught instanceof ApiError && caught.status === 404)) {
        setError(caught);
        return;
      }
    }
    changed();
  };

  return (
    <section className="study-page">
      <div className="study-header">
        <h1>{t('study.title')}</h1>
        {due > 0 && (
          <a className="button primary" href={studyHref(true)} data-testid="review-all">
            {t('study.reviewAll', { count: due })}
          </a>
        )}
      </div>
      <ErrorBanner error={error} onRetry={() => void load()} />
      <CreateDeckForm onCreated={changed} />
      <h2>{t('study.decks')}</h2>
      {loaded && decks.length === 0 && !error && <p className="muted">{t('study.noDecks')}</p>}
      <ul className="deck-list" data-testid="deck-list">
        {decks.map((deck) => {
          const retention = retentionPercent(deck);
          const title = deck.title || deck.deck_id;
          return (
            <li key={deck.deck_id} className="deck-row" data-testid="deck-row" data-deck-id={deck.deck_id}>
              <div className="deck-head">
                <h3 className="deck-title">{title}</h3>
                <span className="muted small">
                  {t(`study.kind.${deck.kind ?? 'CARD_KIND_FLASHCARD'}`)} · {t('study.cards', { count: deck.card_count ?? 0 })} ·{' '}
                  {formatTime(deck.created_at, lang)}
                </span>
              </div>
              <dl className="deck-stats">
                <div>
                  <dt>{t('study.stats.due')}</dt>
                  <dd data-testid="deck-due">{deck.due_count ?? 0}</dd>
                </div>
                <div>
                  <dt>{t('study.stats.new')}</dt>
                  <dd data-testid="deck-new">{deck.new_count ?? 0}</dd>
                </div>
                <div>
                  <dt>{t('study.stats.learned')}</dt>
                  <dd data-testid="deck-learned">{deck.learned_count ?? 0}</dd>
                </div>
                <div>
                  <dt>{t('study.stats.retention')}</dt>
                  <dd data-testid="deck-retention">{retention || t('study.stats.noReviews')}</dd>
                </div>
              </dl>
              <div className="deck-actions">
                {(deck.due_count ?? 0) > 0 && (
                  <a className="button primary" href={studyHref(true, deck.deck_id)} data-testid="review-deck">
                    {t('study.reviewDeck')}
                    <span className="visually-hidden">: {title}</span>
                  </a>
                )}
                {deck.kind === 'CARD_KIND_MULTIPLE_CHOICE' && (
                  <a className="button" href={quizHref(deck.deck_id)} data-testid="quiz-deck">
                    {t('quiz.take')}
                    <span className="visually-hidden">: {title}</span>
                  </a>
                )}
                <button type="button" className="ghost small" onClick={() => void remove(deck)} data-testid="delete-deck">
                  {t('study.delete')}
                  <span className="visually-hidden">: {title}</span>
                </button>
              </div>
              <DeckCards deck={deck} onChanged={changed} />
            </li>
          );
        })}
      </ul>
    </section>
  );
}

function CreateDeckForm({ onCreated }: { onCreated: () => void }) {
  const { client } = useApp();
  const { t } = useI18n();
  const [files, setFiles] = useState<StoredFile[]>([]);
  const [kind, setKind] = useState<CardKind>('CARD_KIND_FLASHCARD');
  const [size, setSize] = useState(String(DEFAULT_DECK_SIZE));
  const [title, setTitle] = useState('');
  const [allFiles, setAllFiles] = useState(true);
  const [chosen, setChosen] = useState<Set<string>>(() => new Set());
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [invalid, setInvalid] = useState('');
  const [created, setCreated] = useState<Deck | null>(null);

  const loadFiles = useCallback(async () => {
    try {
      const listed = await client.get<{ files?: StoredFile[] }>('/v1/files', { page_size: 200 });
      setFiles(newestFirst((listed.files ?? []).filter((f) => f.status === 'FILE_STATUS_READY'), (f) => f.created_at));
    } catch (caught) {
      setError(caught);
    }
  }, [client]);

  useEffect(() => {
    void loadFiles();
  }, [loadFiles]);

  const toggle = (fileId: string) =>
    setChosen((current) => {
      const next = new Set(current);
      if (next.has(fileId)) next.delete(fileId);
      else next.add(fileId);
      return next;
    });

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    // Files deleted meanwhile leave the choice.
    const ready = new Set(files.map((f) => f.file_id));
    const built = deckRequest({ kind, size, title, allFiles, fileIds: [...chosen].filter((id) => ready.has(id)) });
    if ('error' in built) {
      setInvalid(t(built.error, { max: MAX_DECK_SIZE }));
      return;
    }
    setInvalid('');
    setError(null);
    setCreated(null);
    setBusy(true);
    try {
      const deck = await client.json<Deck>('POST', '/v1/decks', { body: built.body });
      setCreated(deck);
      setTitle('');
      onCreated();
    } catch (caught) {
      setError(caught);
    } finally {
      setBusy(false);
    }
  };

  // noValidate: the size is checked by deckRequest and said in the UI's language, not by a browser tooltip.
  return (
    <form className="card deck-form" onSubmit={(e) => void submit(e)} noValidate data-testid="deck-form" aria-busy={busy}>
      <h2>{t('study.create.title')}</h2>
      <div className="deck-form-fields">
        <label>
          {t('study.create.kind')}
          <select value={kind} onChange={(e) => setKind(e.target.value as CardKind)} data-testid="deck-kind">
            {DECK_KINDS.map((k) => (
              <option key={k} value={k}>
                {t(`study.kind.${k}`)}
              </option>
            ))}
          </select>
        </label>
        <label>
          {t('study.create.size')}
          <input type="number" min={1} max={MAX_DECK_SIZE} value={size} onChange={(e) => setSize(e.target.value)} data-testid="deck-size" />
        </label>
        <label className="deck-form-title">
          {t('study.create.name')}
          <input type="text" maxLength={200} value={title} onChange={(e) => setTitle(e.target.value)} data-testid="deck-title" />
        </label>
      </div>
      <fieldset className="deck-files">
        <legend>{t('study.create.files')}</legend>
        <label>
          <input type="radio" name="deck-files" checked={allFiles} onChange={() => setAllFiles(true)} data-testid="deck-all-files" />{' '}
          {t('study.create.allFiles', { count: files.length })}
        </label>
        <label>
          <input
            type="radio"
            name="deck-files"
            checked={!allFiles}
            onChange={() => setAllFiles(false)}
            disabled={files.length === 0}
            data-testid="deck-some-files"
          />{' '}
          {t('study.create.someFiles')}
        </label>
        {!allFiles && (
          <ul className="deck-file-list">
            {files.map((file) => (
              <li key={file.file_id}>
                <label>
                  <input
                    type="checkbox"
                    checked={chosen.has(file.file_id)}
                    onChange={() => toggle(file.file_id)}
                    data-testid="deck-file"
                    data-file-id={file.file_id}
                  />{' '}
                  {file.file_name || file.file_id}
                </label>
              </li>
            ))}
          </ul>
        )}
        {files.length === 0 && <p className="muted small">{t('study.create.noFiles')}</p>}
      </fieldset>
      {invalid && (
        <div className="error-banner" role="alert">
          <span className="error-text">{invalid}</span>
        </div>
      )}
      <ErrorBanner error={error} onDismiss={() => setError(null)} />
      {created && (
        <p className="notice" role="status" data-testid="deck-created">
          {t('study.created', { title: created.title || '', count: created.card_count ?? 0 })}
          {(created.dropped ?? 0) > 0 ? ` ${t('study.dropped', { count: created.dropped ?? 0 })}` : ''}
        </p>
      )}
      <button type="submit" className="primary" disabled={busy} data-testid="deck-create">
        {busy ? t('study.create.busy') : t('study.create.submit')}
      </button>
    </form>
  );
}

function ReviewScreen({ deckId }: { deckId: string }) {
  const { client } = useApp();
  const { t } = useI18n();
  const [queue, setQueue] = useState<StudyCard[]>([]);
  const [due, setDue] = useState(0);
  const [loaded, setLoaded] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [revealed, setRevealed] = useState(false);
  const [picked, setPicked] = useState<number | null>(null);
  const [reviewed, setReviewed] = useState(0);
  const busy = useRef(false);
  const shownAt = useRef(Date.now());
  const card = queue[0];
  const choices = card?.kind === 'CARD_KIND_MULTIPLE_CHOICE' ? (card.choices ?? []) : [];

  const load = useCallback(async () => {
    try {
      const answer = await client.get<DueCards>('/v1/reviews:due', { deck_id: deckId || undefined, page_size: QUEUE_SIZE });
      setQueue(answer.cards ?? []);
      setDue(answer.due_count ?? 0);
      setError(null);
    } catch (caught) {
      setError(caught);
    } finally {
      setLoaded(true);
    }
  }, [client, deckId]);

  useEffect(() => {
    void load();
  }, [load]);

  // A new card on screen: its front only, and its clock starts (the review log keeps the time).
  const cardId = card?.card_id ?? '';
  useEffect(() => {
    setRevealed(false);
    setPicked(null);
    shownAt.current = Date.now();
  }, [cardId]);

  const reveal = useCallback(() => setRevealed(true), []);
  const choose = useCallback((index: number) => {
    setPicked(index);
    setRevealed(true);
  }, []);

  const rate = useCallback(
    async (rating: Rating) => {
      if (!card || busy.current) return;
      busy.current = true;
      try {
        await client.json('POST', `/v1/cards/${encodeURIComponent(card.card_id)}:review`, {
          body: { rating, duration_ms: Math.min(Date.now() - shownAt.current, 3_600_000) },
        });
        setReviewed((n) => n + 1);
        // Asked again rather than popped: a card rated "again" may be due again in a minute.
        await load();
        dueChanged();
      } catch (caught) {
        // A card deleted or suspended in another tab: the queue moves on, and the error says why.
        if (caught instanceof ApiError && (caught.status === 404 || caught.status === 400)) await load();
        setError(caught);
      } finally {
        busy.current = false;
      }
    },
    [card, client, load],
  );

  useEffect(() => {
    if (!card) return;
    const onKey = (event: KeyboardEvent) => {
      if (event.ctrlKey || event.metaKey || event.altKey || typingInto(event.target)) return;
      if (event.key === ' ' && spaceBelongsTo(event.target)) return;
      const action = reviewKeyAction(event.key, revealed, choices.length);
      // Space turns the card; it never scrolls the page here.
      if (event.key === ' ') event.preventDefault();
      if (!action) return;
      event.preventDefault();
      if (action.type === 'reveal') reveal();
      else if (action.type === 'choose') choose(action.index);
      else void rate(action.rating);
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [card, revealed, choices.length, reveal, choose, rate]);

  const href = sourceHref(card?.source);
  return (
    <section className="study-page review-page">
      <div className="study-header">
        <h1>{t('study.reviewTitle')}</h1>
        <a href={studyHref()} data-testid="back-to-decks">
          {t('study.back')}
        </a>
      </div>
      <ErrorBanner error={error} onRetry={() => void load()} onDismiss={() => setError(null)} />
      {!loaded && <p className="muted">{t('common.loading')}</p>}
      {loaded && !card && !error && (
        <div className="review-done" data-testid="review-done">
          <p>{t('study.done')}</p>
          {reviewed > 0 && <p className="muted">{t('study.reviewedCount', { count: reviewed })}</p>}
        </div>
      )}
      {card && (
        <>
          <p className="muted small" aria-live="polite" data-testid="review-due">
            {t('study.dueLeft', { count: due })}
          </p>
          <article className="review-card card" data-testid="review-card" data-card-id={card.card_id} data-revealed={revealed}>
            <p className="review-kind muted small">{t(`study.kind.${card.kind ?? 'CARD_KIND_FLASHCARD'}`)}</p>
            <p className="review-front" data-testid="card-front">
              {card.front}
            </p>
            {choices.length > 0 && (
              <ol className="choices" data-testid="choices">
                {choices.map((choice, index) => {
                  const mark = choiceMark(choice, card, revealed, picked, index);
                  return (
                    <li key={`${index}:${choice}`} className={`choice ${mark}`} data-testid="choice" data-mark={mark || undefined}>
                      {revealed ? (
                        <span className="choice-text">
                          <span aria-hidden="true">{index + 1}. </span>
                          {choice}
                          {mark === 'right' && <strong className="choice-verdict"> ✓ {t('study.rightAnswer')}</strong>}
                          {mark === 'wrong' && <strong className="choice-verdict"> ✗ {t('study.yourPick')}</strong>}
                        </span>
                      ) : (
                        <button type="button" onClick={() => choose(index)} aria-keyshortcuts={String(index + 1)}>
                          <span aria-hidden="true">{index + 1}. </span>
                          {choice}
                        </button>
                      )}
                    </li>
                  );
                })}
              </ol>
            )}
            <div aria-live="polite">
              {revealed && (
                <div className="review-back" data-testid="card-back">
                  <p className="muted small">{t('study.answer')}</p>
                  <p className="review-answer" data-testid="card-answer">
                    {card.back}
                  </p>
                  {card.source?.quote && (
                    <blockquote className="snippet" data-testid="card-quote">
                      {markAnswer(card.source.quote, card.back ?? '').map((part, index) =>
                        part.mark ? <mark key={index}>{part.text}</mark> : <span key={index}>{part.text}</span>,
                      )}
                    </blockquote>
                  )}
                </div>
              )}
            </div>
            <p className="review-source small" data-testid="card-source">
              {t('study.source')}: {sourceLabel(card.source, t)}{' '}
              {href && (
                <a href={href} data-testid="card-source-open">
                  {t('study.openSource')}
                </a>
              )}
            </p>
          </article>
          {!revealed ? (
            <div className="review-actions">
              <button type="button" className="primary" onClick={reveal} aria-keyshortcuts="Space" data-testid="reveal">
                {t('study.show')}
              </button>
              <span className="muted small">{choices.length > 0 ? t('study.pickHint') : t('study.revealHint')}</span>
            </div>
          ) : (
            <div className="review-actions" role="group" aria-label={t('study.rateHint')} data-testid="ratings">
              <span className="muted small">{t('study.rateHint')}</span>
              {RATINGS.map((rating, index) => (
                <button
                  key={rating}
                  type="button"
                  className={`rate rate-${rating}`}
                  onClick={() => void rate(rating)}
                  aria-keyshortcuts={String(index + 1)}
                  data-testid={`rate-${rating}`}
                >
                  <span className="rate-key" aria-hidden="true">
                    {index + 1}
                  </span>{' '}
                  {t(`study.rate.${rating}`)}
                </button>
              ))}
            </div>
          )}
        </>
      )}
    </section>
  );
}
