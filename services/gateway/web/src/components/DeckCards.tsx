import { useCallback, useState, type FormEvent } from 'react';
import { ApiError } from '../api/errors';
import type { Deck, StudyCard } from '../api/types';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { sourceLabel } from '../lib/study';
import { ErrorBanner } from './ErrorBanner';

// Cards asked for at a time: a deck holds up to 500, and the list grows by this on "more".
const PAGE_SIZE = 100;

interface CardPage {
  cards?: StudyCard[];
  next_page_token?: string;
}

/** A deck's cards, opened from its row: each one edited (front, back), suspended or resumed, or
 * deleted after a confirm. `onChanged` runs after each change that moves the deck's counts. */
export function DeckCards({ deck, onChanged }: { deck: Deck; onChanged: () => void }) {
  const { client } = useApp();
  const { t } = useI18n();
  const [open, setOpen] = useState(false);
  const [cards, setCards] = useState<StudyCard[]>([]);
  const [next, setNext] = useState('');
  const [loaded, setLoaded] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [editing, setEditing] = useState('');
  const [front, setFront] = useState('');
  const [back, setBack] = useState('');
  const [invalid, setInvalid] = useState('');
  const [busy, setBusy] = useState(false);
  const path = `/v1/decks/${encodeURIComponent(deck.deck_id)}/cards`;
  const title = deck.title || deck.deck_id;

  const load = useCallback(
    async (token: string) => {
      try {
        const page = await client.get<CardPage>(path, { page_size: PAGE_SIZE, page_token: token || undefined });
        setCards((current) => (token ? [...current, ...(page.cards ?? [])] : (page.cards ?? [])));
        setNext(page.next_page_token ?? '');
        setError(null);
      } catch (caught) {
        setError(caught);
      } finally {
        setLoaded(true);
      }
    },
    [client, path],
  );

  const toggle = () => {
    if (!open) void load('');
    setOpen(!open);
    setEditing('');
  };

  const replace = (card: StudyCard) => setCards((current) => current.map((c) => (c.card_id === card.card_id ? card : c)));
  const drop = (cardId: string) => setCards((current) => current.filter((c) => c.card_id !== cardId));
  const cardPath = (card: StudyCard) => `/v1/cards/${encodeURIComponent(card.card_id)}`;

  // A card gone already (deleted in another tab) leaves the list; any other failure is shown.
  const failed = (card: StudyCard, caught: unknown) => {
    if (caught instanceof ApiError && caught.status === 404) {
      drop(card.card_id);
      onChanged();
    } else {
      setError(caught);
    }
  };

  const startEdit = (card: StudyCard) => {
    setEditing(card.card_id);
    setFront(card.front ?? '');
    setBack(card.back ?? '');
    setInvalid('');
  };

  const save = async (event: FormEvent, card: StudyCard) => {
    event.preventDefault();
    // The server keeps a field sent empty as it was: an emptied field is refused here, said so.
    if (!front.trim() || !back.trim()) {
      setInvalid(t('study.card.emptyText'));
      return;
    }
    setBusy(true);
    try {
      replace(await client.json<StudyCard>('PATCH', cardPath(card), { body: { front: front.trim(), back: back.trim() } }));
      setEditing('');
      setError(null);
    } catch (caught) {
      failed(card, caught);
    } finally {
      setBusy(false);
    }
  };

  const suspend = async (card: StudyCard) => {
    try {
      replace(await client.json<StudyCard>('PATCH', cardPath(card), { body: { suspended: !card.suspended } }));
      setError(null);
      onChanged(); // a suspended card is never due: the due counts move
    } catch (caught) {
      failed(card, caught);
    }
  };

  const remove = async (card: StudyCard) => {
    if (!window.confirm(t('study.card.confirmDelete', { front: (card.front ?? '').slice(0, 80) }))) return;
    try {
      await client.json('DELETE', cardPath(card));
      drop(card.card_id);
      setError(null);
      onChanged();
    } catch (caught) {
      failed(card, caught);
    }
  };

  return (
    <div className="deck-cards" data-testid="deck-cards">
      <button type="button" className="ghost small" aria-expanded={open} onClick={toggle} data-testid="toggle-cards">
        {open ? t('study.cardList.hide') : t('study.cardList.show')}
        <span className="visually-hidden">: {title}</span>
      </button>
      {open && (
        <div className="deck-card-panel">
          <ErrorBanner error={error} onRetry={() => void load('')} onDismiss={() => setError(null)} />
          {!loaded && <p className="muted small">{t('common.loading')}</p>}
          {loaded && cards.length === 0 && !error && <p className="muted small">{t('study.cardList.empty')}</p>}
          <ol className="deck-card-list" aria-label={t('study.cardList.title', { title })}>
            {cards.map((card) => (
              <li
                key={card.card_id}
                className={`deck-card${card.suspended ? ' suspended' : ''}`}
                data-testid="deck-card"
                data-card-id={card.card_id}
                data-suspended={card.suspended ? 'true' : 'false'}
              >
                {editing === card.card_id ? (
                  <form className="deck-card-edit" onSubmit={(e) => void save(e, card)} noValidate data-testid="card-edit">
                    <label>
                      {t('study.card.front')}
                      <textarea value={front} maxLength={2000} onChange={(e) => setFront(e.target.value)} data-testid="card-edit-front" />
                    </label>
                    <label>
                      {t('study.card.back')}
                      <textarea value={back} maxLength={4000} onChange={(e) => setBack(e.target.value)} data-testid="card-edit-back" />
                    </label>
                    {invalid && (
                      <div className="error-banner" role="alert">
                        <span className="error-text">{invalid}</span>
                      </div>
                    )}
                    <div className="deck-actions">
                      <button type="submit" className="primary small" disabled={busy} data-testid="card-save">
                        {t('study.card.save')}
                      </button>
                      <button type="button" className="ghost small" onClick={() => setEditing('')} data-testid="card-cancel">
                        {t('study.card.cancel')}
                      </button>
                    </div>
                  </form>
                ) : (
                  <>
                    <p className="deck-card-front" data-testid="deck-card-front">
                      {card.front}
                    </p>
                    <p className="deck-card-back muted" data-testid="deck-card-back">
                      {card.back}
                    </p>
                    <p className="muted small">
                      {sourceLabel(card.source, t)}
                      {card.suspended && (
                        <strong className="deck-card-suspended" data-testid="deck-card-suspended">
                          {' '}
                          · {t('study.card.suspended')}
                        </strong>
                      )}
                    </p>
                    <div className="deck-actions">
                      <button type="button" className="ghost small" onClick={() => startEdit(card)} data-testid="card-edit-open">
                        {t('study.card.edit')}
                      </button>
                      <button type="button" className="ghost small" onClick={() => void suspend(card)} data-testid="card-suspend">
                        {card.suspended ? t('study.card.unsuspend') : t('study.card.suspend')}
                      </button>
                      <button type="button" className="ghost small" onClick={() => void remove(card)} data-testid="card-delete">
                        {t('study.card.delete')}
                      </button>
                    </div>
                  </>
                )}
              </li>
            ))}
          </ol>
          {next && (
            <button type="button" className="small" onClick={() => void load(next)} data-testid="cards-more">
              {t('study.cardList.more')}
            </button>
          )}
        </div>
      )}
    </div>
  );
}
