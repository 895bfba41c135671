import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import type { MessageHit, Session } from '../api/types';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { formatTime, newestFirst } from '../lib/format';
import { splitHighlighted } from '../lib/highlight';
import { chatHref, navigate } from '../router';
import { ErrorBanner } from './ErrorBanner';

const sessionTime = (session: Session) => session.last_message_at || session.updated_at || session.created_at;

/** Search snippet: the <mark> tags become <mark> elements, everything else stays text. */
export function Highlighted({ snippet }: { snippet: string }) {
  return (
    <>
      {splitHighlighted(snippet).map((part, i) => (part.mark ? <mark key={i}>{part.text}</mark> : <span key={i}>{part.text}</span>))}
    </>
  );
}

export function SessionsSidebar({ activeSessionId }: { activeSessionId: string }) {
  const { client, sessionsVersion } = useApp();
  const { t, lang } = useI18n();
  const [sessions, setSessions] = useState<Session[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [editing, setEditing] = useState<string>('');
  const [draftTitle, setDraftTitle] = useState('');
  const [query, setQuery] = useState('');
  const [hits, setHits] = useState<MessageHit[] | null>(null);
  const [searchError, setSearchError] = useState<unknown>(null);

  const load = useCallback(async () => {
    try {
      const response = await client.get<{ sessions?: Session[] }>('/v1/sessions', { page_size: 100 });
      setSessions(newestFirst(response.sessions ?? [], sessionTime));
      setError(null);
    } catch (caught) {
      setError(caught);
    }
  }, [client]);

  useEffect(() => {
    void load();
  }, [load, sessionsVersion]);

  // Search as the student types, a moment after the last key; a newer query cancels the older one.
  const searchAbort = useRef<AbortController | null>(null);
  useEffect(() => {
    const text = query.trim();
    searchAbort.current?.abort();
    if (!text) {
      setHits(null);
      setSearchError(null);
      return;
    }
    const controller = new AbortController();
    searchAbort.current = controller;
    const timer = window.setTimeout(async () => {
      try {
        const response = await client.get<{ hits?: MessageHit[] }>('/v1/messages:search', { query: text, page_size: 20 }, controller.signal);
        setHits(response.hits ?? []);
        setSearchError(null);
      } catch (caught) {
        if (!controller.signal.aborted) setSearchError(caught);
      }
    }, 250);
    return () => {
      window.clearTimeout(timer);
      controller.abort();
    };
  }, [client, query]);

  const rename = async (event: FormEvent, session: Session) => {
    event.preventDefault();
    const title = draftTitle.trim();
    setEditing('');
    if (!title || title === session.title) return;
    try {
      const updated = await client.json<Session>('PATCH', `/v1/sessions/${encodeURIComponent(session.session_id)}`, { body: { title } });
      setSessions((list) => list.map((s) => (s.session_id === session.session_id ? { ...s, ...updated, title: updated.title ?? title } : s)));
    } catch (caught) {
      setError(caught);
    }
  };

  const remove = async (session: Session) => {
    if (!window.confirm(t('sessions.confirmDelete', { title: session.title || t('sessions.untitled') }))) return;
    try {
      await client.json('DELETE', `/v1/sessions/${encodeURIComponent(session.session_id)}`);
      setSessions((list) => list.filter((s) => s.session_id !== session.session_id));
      if (session.session_id === activeSessionId) navigate(chatHref(''));
    } catch (caught) {
      setError(caught);
    }
  };

  return (
    <div className="sessions">
      <a className="button primary new-chat" href="#/chat" title={t('chat.newChatShortcut')} data-testid="new-chat">
        + {t('chat.newChat')}
      </a>
      <input
        type="search"
        className="search-box"
        placeholder={t('sessions.search')}
        aria-label={t('sessions.search')}
        value={query}
        onChange={(e) => setQuery(e.target.value)}
        data-testid="message-search"
      />
      <ErrorBanner error={searchError} />
      {hits !== null ? (
        <ul className="search-hits" data-testid="search-hits">
          {hits.length === 0 && <li className="muted">{t('sessions.noHits')}</li>}
          {hits.map((hit, i) => (
            <li key={`${hit.message?.message_id ?? i}`}>
              <a href={chatHref(hit.message?.session_id ?? '', hit.message?.message_id ?? '')} className="hit">
                <span className="hit-title">{hit.session_title || t('sessions.untitled')}</span>
                {/* Storage's snippet is plain text (Markdown stripped, stock sentences left out); the
                    message's raw content is never shown here. Who said it leads the snippet. */}
                <span className="hit-snippet" data-testid="hit-snippet">
                  <span className="hit-role" data-role={hit.message?.role ?? ''}>
                    {hit.message?.role === 'ROLE_ASSISTANT' ? t('sessions.byAssistant') : t('sessions.byYou')}
                  </span>{' '}
                  <Highlighted snippet={hit.highlighted ?? ''} />
                </span>
              </a>
            </li>
          ))}
        </ul>
      ) : (
        <>
          <h2 className="sidebar-title">{t('sessions.title')}</h2>
          <ErrorBanner error={error} onRetry={() => void load()} />
          <ul className="session-list" data-testid="session-list">
            {sessions.length === 0 && !error && <li className="muted">{t('sessions.empty')}</li>}
            {sessions.map((session) => (
              <li key={session.session_id} className={session.session_id === activeSessionId ? 'active' : ''}>
                {editing === session.session_id ? (
                  <form onSubmit={(e) => void rename(e, session)} className="rename-form">
                    <input
                      autoFocus
                      value={draftTitle}
                      maxLength={200}
                      onChange={(e) => setDraftTitle(e.target.value)}
                      onKeyDown={(e) => e.key === 'Escape' && setEditing('')}
                      aria-label={t('sessions.rename')}
                    />
                    <button type="submit">{t('sessions.save')}</button>
                  </form>
                ) : (
                  <>
                    <a href={chatHref(session.session_id)} className="session-link">
                      <span className="session-title">{session.title || t('sessions.untitled')}</span>
                      <span className="session-meta">{formatTime(sessionTime(session), lang)}</span>
                    </a>
                    <span className="session-actions">
                      <button
                        type="button"
                        className="ghost small"
                        title={t('sessions.rename')}
                        aria-label={t('sessions.rename')}
                        onClick={() => {
                          setEditing(session.session_id);
                          setDraftTitle(session.title ?? '');
                        }}
                      >
                        ✎
                      </button>
                      <button
                        type="button"
                        className="ghost small"
                        title={t('sessions.delete')}
                        aria-label={t('sessions.delete')}
                        onClick={() => void remove(session)}
                      >
                        ×
                      </button>
                    </span>
                  </>
                )}
              </li>
            ))}
          </ul>
        </>
      )}
    </div>
  );
}
