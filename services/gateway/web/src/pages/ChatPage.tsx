import { useVirtualizer } from '@tanstack/react-virtual';
import { memo, useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState, type KeyboardEvent } from 'react';
import { ApiError, errorFromEvent } from '../api/errors';
import type { Agent, ChatEvent, Message, Session } from '../api/types';
import { CitationPanel } from '../components/CitationPanel';
import { ErrorBanner } from '../components/ErrorBanner';
import { Markdown } from '../components/Markdown';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { citationLabel, numberCitations, type NumberedCitation } from '../lib/citations';
import { keepUnsentQuestion, sessionTitle, unsentQuestion } from '../lib/session';
import { chatHref, navigate } from '../router';

export interface ChatMessage {
  key: string;
  role: 'user' | 'assistant';
  content: string;
  citations: NumberedCitation[];
  backend: string;
  messageId: string;
  streaming: boolean;
  stopped: boolean;
  error: unknown;
  cached: boolean;
}

let keyCounter = 0;
const newKey = () => `m${++keyCounter}`;

function fromStored(message: Message): ChatMessage {
  return {
    key: message.message_id || newKey(),
    role: message.role === 'ROLE_USER' ? 'user' : 'assistant',
    content: message.content ?? '',
    citations: numberCitations(message.citations),
    backend: message.backend ?? '',
    messageId: message.message_id ?? '',
    streaming: false,
    stopped: false,
    error: null,
    cached: false,
  };
}

function BackendBadge({ backend, cached }: { backend: string; cached?: boolean }) {
  const { t } = useI18n();
  if (!backend) return null;
  const llm = backend.startsWith('llm:');
  return (
    <span className={`badge ${llm ? 'badge-llm' : 'badge-extractive'}`} title={t('chat.backend')} data-testid="backend-badge">
      {llm ? t('chat.backendLlm', { model: backend.slice(4) }) : t('chat.backendExtractive')}
      {cached ? ` · ${t('chat.cached')}` : ''}
    </span>
  );
}

interface MessageViewProps {
  message: ChatMessage;
  highlighted: boolean;
  canRegenerate: boolean;
  onCite: (citation: NumberedCitation) => void;
  onRegenerate: () => void;
}

const MessageView = memo(function MessageView({ message, highlighted, canRegenerate, onCite, onRegenerate }: MessageViewProps) {
  const { t } = useI18n();
  const [copied, setCopied] = useState(false);
  const numbers = useMemo(() => new Set(message.citations.map((c) => c.index)), [message.citations]);
  const byIndex = useMemo(() => new Map(message.citations.map((c) => [c.index, c])), [message.citations]);
  const renderCitation = useCallback(
    (index: number) => {
      const citation = byIndex.get(index);
      if (!citation) return `[${index}]`;
      return (
        <button
          type="button"
          className="cite-chip inline"
          title={citationLabel(citation, t)}
          onClick={() => onCite(citation)}
          data-testid="citation-chip"
        >
          {index}
        </button>
      );
    },
    [byIndex, onCite, t],
  );
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(message.content);
      setCopied(true);
      window.setTimeout(() => setCopied(false), 1500);
    } catch {
      // Clipboard refused (insecure context): nothing sensible to do.
    }
  };

  if (message.role === 'user') {
    return (
      <div className={`message user ${highlighted ? 'highlighted' : ''}`} data-testid="message-user" data-message-id={message.messageId}>
        <div className="bubble plain">{message.content}</div>
      </div>
    );
  }
  return (
    <div
      className={`message assistant ${highlighted ? 'highlighted' : ''}`}
      data-testid="message-assistant"
      data-message-id={message.messageId}
      aria-busy={message.streaming}
    >
      <div className="bubble">
        {message.content ? (
          <Markdown text={message.content} citationNumbers={numbers} renderCitation={renderCitation} />
        ) : message.streaming ? (
          <span className="muted typing">{t('chat.thinking')}</span>
        ) : null}
        {message.stopped && <p className="muted">{t('chat.stopped')}</p>}
        {message.error ? <ErrorBanner error={message.error} /> : null}
        {message.citations.length > 0 && (
          <div className="sources" data-testid="sources">
            <span className="muted">{t('chat.sources')}:</span>
            {message.citations.map((citation) => (
              <button
                key={citation.index}
                type="button"
                className="cite-chip"
                onClick={() => onCite(citation)}
                data-testid="source-chip"
              >
                [{citation.index}] {citationLabel(citation, t)}
              </button>
            ))}
          </div>
        )}
        {!message.streaming && (
          <div className="message-actions">
            <BackendBadge backend={message.backend} cached={message.cached} />
            {message.content && (
              <button type="button" className="ghost small" onClick={() => void copy()}>
                {copied ? t('chat.copied') : t('chat.copy')}
              </button>
            )}
            {canRegenerate && (
              <button type="button" className="ghost small" onClick={onRegenerate} data-testid="regenerate">
                {t('chat.regenerate')}
              </button>
            )}
          </div>
        )}
      </div>
    </div>
  );
});

function agentName(agent: Agent, lang: string): string {
  return (lang === 'en' ? agent.name_en || agent.name_vi : agent.name_vi || agent.name_en) || agent.agent_id;
}

function agentDescription(agent: Agent | undefined, lang: string): string {
  if (!agent) return '';
  return (lang === 'en' ? agent.description_en || agent.description_vi : agent.description_vi || agent.description_en) ?? '';
}

// The last agent list that loaded: a reload while chat is down still has a picker to show.
const AGENTS_KEY = 'sa.agents';
// A failed agent list is asked for again this often (and at once by the banner's Retry).
const AGENTS_RETRY_MS = 5000;

function cachedAgents(): Agent[] {
  try {
    const parsed: unknown = JSON.parse(localStorage.getItem(AGENTS_KEY) ?? '[]');
    return Array.isArray(parsed) ? (parsed as Agent[]).filter((a) => a && typeof a.agent_id === 'string') : [];
  } catch {
    return [];
  }
}

export function ChatPage({ sessionId, focusMessageId }: { sessionId: string; focusMessageId: string }) {
  const { client, chatFileIds, sessionsChanged } = useApp();
  const { t, lang } = useI18n();
  const [messages, setMessages] = useState<ChatMessage[]>([]);
  const [loading, setLoading] = useState(false);
  const [loadError, setLoadError] = useState<unknown>(null);
  const [agents, setAgents] = useState<Agent[]>(cachedAgents);
  const [agentsError, setAgentsError] = useState<unknown>(null);
  const [agentsAttempt, setAgentsAttempt] = useState(0);
  // A question whose answer failed before any of it arrived: the banner above the box offers a retry.
  const [sendError, setSendError] = useState<{ error: unknown; regenerate: boolean } | null>(null);
  const [agentId, setAgentId] = useState(() => localStorage.getItem('sa.agent') ?? '');
  const [input, setInput] = useState('');
  const [streaming, setStreaming] = useState(false);
  const [openCitation, setOpenCitation] = useState<NumberedCitation | null>(null);
  const [highlightKey, setHighlightKey] = useState('');

  const abortRef = useRef<AbortController | null>(null);
  const scrollRef = useRef<HTMLDivElement>(null);
  // Follow the streaming answer unless the student scrolled up to read.
  const stickToBottom = useRef(true);
  // The session this page created itself while streaming: its route change must not reload it.
  const ownSessionRef = useRef('');
  const sessionRef = useRef(sessionId);
  sessionRef.current = sessionId;

  useEffect(() => {
    let live = true;
    let timer = 0;
    client
      .get<{ agents?: Agent[] }>('/v1/agents')
      .then((response) => {
        if (!live) return;
        const list = response.agents ?? [];
        setAgents(list);
        setAgentsError(null);
        setAgentId((current) => (list.some((a) => a.agent_id === current) ? current : (list[0]?.agent_id ?? '')));
        try {
          localStorage.setItem(AGENTS_KEY, JSON.stringify(list));
        } catch {
          // not kept: the next reload asks again
        }
      })
      .catch((caught) => {
        if (!live) return;
        setAgentsError(caught);
        timer = window.setTimeout(() => setAgentsAttempt((n) => n + 1), AGENTS_RETRY_MS);
      });
    return () => {
      live = false;
      window.clearTimeout(timer);
    };
  }, [client, agentsAttempt]);

  useEffect(() => {
    if (agentId) localStorage.setItem('sa.agent', agentId);
  }, [agentId]);

  // Switching session: stop any answer in flight, then load the history.
  useEffect(() => {
    if (sessionId && sessionId === ownSessionRef.current) return;
    abortRef.current?.abort();
    ownSessionRef.current = '';
    setOpenCitation(null);
    setLoadError(null);
    setSendError(null);
    if (!sessionId) {
      setMessages([]);
      return;
    }
    // An answer that never finished here (stopped, failed, the tab closed): its question is back in the box.
    const unsent = unsentQuestion(sessionId);
    if (unsent) setInput((current) => (current.trim() ? current : unsent));
    const controller = new AbortController();
    setLoading(true);
    setMessages([]);
    client
      .get<{ messages?: Message[] }>(`/v1/sessions/${encodeURIComponent(sessionId)}/messages`, { page_size: 500 }, controller.signal)
      .then((response) => {
        const stored = [...(response.messages ?? [])].sort(
          (a, b) => (Date.parse(a.created_at ?? '') || 0) - (Date.parse(b.created_at ?? '') || 0),
        );
        setMessages(stored.map(fromStored));
      })
      .catch((caught) => {
        if (!controller.signal.aborted) setLoadError(caught);
      })
      .finally(() => {
        if (!controller.signal.aborted) setLoading(false);
      });
    return () => controller.abort();
  }, [client, sessionId]);

  useEffect(() => () => abortRef.current?.abort(), []);

  const update = useCallback((key: string, change: (message: ChatMessage) => ChatMessage) => {
    setMessages((list) => list.map((m) => (m.key === key ? change(m) : m)));
  }, []);

  const ask = useCallback(
    async (text: string, regenerate: boolean) => {
      const question = text.trim();
      if (!question || abortRef.current) return;
      const controller = new AbortController();
      abortRef.current = controller;
      setSendError(null);
      const assistantKey = newKey();
      const userKey = newKey();
      const assistant: ChatMessage = {
        key: assistantKey,
        role: 'assistant',
        content: '',
        citations: [],
        backend: '',
        messageId: '',
        streaming: true,
        stopped: false,
        error: null,
        cached: false,
      };
      setMessages((list) => {
        if (regenerate) {
          const lastAssistant = list.map((m) => m.role).lastIndexOf('assistant');
          return [...(lastAssistant >= 0 ? list.slice(0, lastAssistant) : list), assistant];
        }
        const user: ChatMessage = { ...assistant, key: userKey, role: 'user', content: question, streaming: false };
        return [...list, user, assistant];
      });
      setStreaming(true);
      stickToBottom.current = true;

      // Deltas arrive faster than frames: batch them into one state update per frame.
      let pending = '';
      let frame = 0;
      const flush = () => {
        frame = 0;
        if (!pending) return;
        const chunk = pending;
        pending = '';
        update(assistantKey, (m) => ({ ...m, content: m.content + chunk }));
      };
      let sawDone = false;
      let sawText = false;
      let sessionOfQuestion = sessionRef.current;
      try {
        const idleMs = await client.streamIdleMs();
        if (!sessionOfQuestion) {
          // A new chat: its session exists before the question is sent, so stopping the first
          // answer (before chat would have named the session it made) keeps the chat in the
          // sidebar and at its address.
          const session = await client.json<Session>('POST', '/v1/sessions', {
            body: { title: sessionTitle(question), agent_id: agentId || undefined },
            signal: controller.signal,
          });
          sessionOfQuestion = session.session_id;
          ownSessionRef.current = session.session_id;
          navigate(chatHref(session.session_id), true);
          sessionsChanged();
        }
        // Until the answer is done (and saved by chat), the question is kept for a reload.
        keepUnsentQuestion(sessionOfQuestion, question);
        await client.stream<ChatEvent>(
          'POST',
          '/v1/chat:stream',
          {
            body: { session_id: sessionOfQuestion || undefined, agent_id: agentId || undefined, message: question, file_ids: chatFileIds },
            signal: controller.signal,
          },
          (event) => {
            if (event.started) {
              const started = event.started;
              update(assistantKey, (m) => ({ ...m, backend: started.backend ?? '' }));
              if (started.session_id && started.session_id !== sessionRef.current) {
                ownSessionRef.current = started.session_id;
                navigate(chatHref(started.session_id), true);
                sessionsChanged();
              }
            }
            if (event.delta?.text) {
              sawText = true;
              pending += event.delta.text;
              if (!frame) frame = requestAnimationFrame(flush);
            }
            if (event.citations) {
              const citations = numberCitations(event.citations.citations);
              update(assistantKey, (m) => ({ ...m, citations }));
            }
            if (event.done) {
              const done = event.done;
              sawDone = true;
              cancelAnimationFrame(frame);
              flush();
              update(assistantKey, (m) => ({ ...m, messageId: done.message_id ?? '', cached: Boolean(done.cached) }));
              keepUnsentQuestion(sessionOfQuestion, '');
            }
            if (event.error) throw errorFromEvent(event.error);
          },
          idleMs,
        );
        if (!sawDone) throw new ApiError('stream', 0, 'INCOMPLETE', 'the stream ended before its answer', '', null, 'STREAM_INCOMPLETE');
      } catch (caught) {
        cancelAnimationFrame(frame);
        flush();
        const aborted = controller.signal.aborted || (caught instanceof DOMException && caught.name === 'AbortError');
        if (!aborted && !sawText) {
          // Nothing of the answer came: the exchange goes, the question is back in the box and the
          // banner above it offers to send it again.
          setMessages((list) => list.filter((m) => m.key !== assistantKey && (regenerate || m.key !== userKey)));
          setSendError({ error: caught, regenerate });
        } else {
          update(assistantKey, (m) => ({ ...m, stopped: aborted, error: aborted ? null : caught }));
        }
        if (!aborted && !regenerate) setInput((current) => (current.trim() ? current : question));
      } finally {
        update(assistantKey, (m) => ({ ...m, streaming: false }));
        if (abortRef.current === controller) abortRef.current = null;
        setStreaming(false);
        sessionsChanged();
      }
    },
    [agentId, chatFileIds, client, sessionsChanged, t, update],
  );

  const send = () => {
    if (!input.trim() || streaming) return;
    const text = input;
    setInput('');
    void ask(text, false);
  };

  const stop = () => abortRef.current?.abort();

  const onKeyDown = (event: KeyboardEvent<HTMLTextAreaElement>) => {
    // Enter sends, Shift+Enter breaks the line; never while an IME (Vietnamese Telex) is composing.
    if (event.key === 'Enter' && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      send();
    }
  };

  const lastUserText = useMemo(() => [...messages].reverse().find((m) => m.role === 'user')?.content ?? '', [messages]);
  const lastAssistantKey = useMemo(() => [...messages].reverse().find((m) => m.role === 'assistant')?.key ?? '', [messages]);
  const regenerate = useCallback(() => void ask(lastUserText, true), [ask, lastUserText]);
  const onCite = useCallback((citation: NumberedCitation) => setOpenCitation(citation), []);
  const currentBackend = useMemo(() => [...messages].reverse().find((m) => m.backend)?.backend ?? '', [messages]);

  // Virtualised list: only the messages near the viewport are in the DOM.
  const virtualizer = useVirtualizer({
    count: messages.length,
    getScrollElement: () => scrollRef.current,
    estimateSize: () => 140,
    overscan: 6,
    getItemKey: (index) => messages[index]?.key ?? index,
  });
  const onScroll = () => {
    const el = scrollRef.current;
    if (el) stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  };
  useLayoutEffect(() => {
    if (!stickToBottom.current || messages.length === 0) return;
    const el = scrollRef.current;
    if (!el) return;
    const frame = requestAnimationFrame(() => {
      el.scrollTop = el.scrollHeight;
    });
    return () => cancelAnimationFrame(frame);
  }, [messages]);

  // A search hit: scroll to its message and mark it.
  useEffect(() => {
    if (!focusMessageId || messages.length === 0) return;
    const index = messages.findIndex((m) => m.messageId === focusMessageId);
    if (index < 0) return;
    stickToBottom.current = false;
    setHighlightKey(messages[index].key);
    virtualizer.scrollToIndex(index, { align: 'center' });
    const timer = window.setTimeout(() => setHighlightKey(''), 4000);
    return () => window.clearTimeout(timer);
    // Runs when the target or the loaded history changes, not on every streamed token.
  }, [focusMessageId, messages.length > 0]);

  const selectedDescription = agentDescription(
    agents.find((a) => a.agent_id === agentId),
    lang,
  );
  const documentsLabel = chatFileIds.length > 0 ? t('chat.docsSome', { count: chatFileIds.length }) : t('chat.docsAll');

  return (
    <section className="chat-page">
      <div className="chat-header">
        <label className="agent-select">
          <span>{t('chat.agent')}</span>
          <select
            value={agentId}
            onChange={(e) => setAgentId(e.target.value)}
            data-testid="agent-select"
            aria-describedby="agent-description"
          >
            {agents.length === 0 && (
              <option value="" disabled>
                {agentsError ? t('chat.agentsFailed') : t('common.loading')}
              </option>
            )}
            {agents.map((agent) => (
              <option key={agent.agent_id} value={agent.agent_id} title={lang === 'en' ? agent.description_en : agent.description_vi}>
                {agentName(agent, lang)}
              </option>
            ))}
          </select>
        </label>
        <a className="chip" href="#/documents" data-testid="docs-scope">
          {documentsLabel}
        </a>
        <BackendBadge backend={currentBackend} />
      </div>
      {selectedDescription && (
        <p className="agent-description muted" id="agent-description" data-testid="agent-description">
          {selectedDescription}
        </p>
      )}
      {agentsError ? (
        <div data-testid="agents-error">
          <ErrorBanner error={agentsError} onRetry={() => setAgentsAttempt((n) => n + 1)} />
        </div>
      ) : null}
      <ErrorBanner error={loadError} onDismiss={() => setLoadError(null)} />
      <div className="messages" ref={scrollRef} onScroll={onScroll} data-testid="messages">
        {loading && <p className="muted pad">{t('chat.loading')}</p>}
        {!loading && messages.length === 0 && <p className="muted empty">{t('chat.empty')}</p>}
        <div className="messages-inner" style={{ height: virtualizer.getTotalSize() }}>
          {virtualizer.getVirtualItems().map((item) => {
            const message = messages[item.index];
            return (
              <div
                key={item.key}
                data-index={item.index}
                ref={virtualizer.measureElement}
                className="message-row"
                style={{ transform: `translateY(${item.start}px)` }}
              >
                <MessageView
                  message={message}
                  highlighted={message.key === highlightKey}
                  canRegenerate={!streaming && message.key === lastAssistantKey && Boolean(lastUserText)}
                  onCite={onCite}
                  onRegenerate={regenerate}
                />
              </div>
            );
          })}
        </div>
      </div>
      {sendError && (
        <div data-testid="send-error">
          <ErrorBanner
            error={sendError.error}
            onRetry={() => {
              if (sendError.regenerate) regenerate();
              else send();
            }}
            onDismiss={() => setSendError(null)}
          />
        </div>
      )}
      <form
        className="composer"
        onSubmit={(e) => {
          e.preventDefault();
          send();
        }}
      >
        <textarea
          value={input}
          onChange={(e) => setInput(e.target.value)}
          onKeyDown={onKeyDown}
          placeholder={t('chat.placeholder')}
          aria-label={t('chat.placeholder')}
          rows={2}
          maxLength={8000}
          data-testid="composer"
        />
        {streaming ? (
          <button type="button" className="danger" onClick={stop} data-testid="stop">
            {t('chat.stop')}
          </button>
        ) : (
          <button type="submit" className="primary" disabled={!input.trim()} data-testid="send">
            {t('chat.send')}
          </button>
        )}
      </form>
      {openCitation && <CitationPanel citation={openCitation} onClose={() => setOpenCitation(null)} />}
    </section>
  );
}
