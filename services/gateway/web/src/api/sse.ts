// A Server-Sent Events parser (https://html.spec.whatwg.org/multipage/server-sent-events.html)
// for fetch() streams: EventSource cannot POST nor send an Authorization header.

export interface SseEvent {
  event: string;
  data: string;
  id: string;
}

/** Incremental parser: feed it text as it arrives, get back the events completed so far. */
export class SseParser {
  private buffer = '';
  private dataLines: string[] = [];
  private eventType = '';
  private lastId = '';
  private sawCarriageReturn = false;

  feed(chunk: string): SseEvent[] {
    if (chunk === '') return [];
    // A "\r\n" pair may be split across chunks: drop the "\n" that follows a trailing "\r".
    if (this.sawCarriageReturn && chunk.startsWith('\n')) chunk = chunk.slice(1);
    this.sawCarriageReturn = chunk.endsWith('\r');
    this.buffer += chunk;
    const events: SseEvent[] = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== '\n' && c !== '\r') continue;
      const line = this.buffer.slice(start, i);
      if (c === '\r' && this.buffer[i + 1] === '\n') i++;
      start = i + 1;
      const event = this.processLine(line);
      if (event) events.push(event);
    }
    this.buffer = this.buffer.slice(start);
    return events;
  }

  /** End of stream: an event without its closing blank line is dropped, as the spec says. */
  end(): SseEvent[] {
    this.buffer = '';
    this.dataLines = [];
    this.eventType = '';
    return [];
  }

  private processLine(line: string): SseEvent | null {
    if (line === '') {
      if (this.dataLines.length === 0) {
        this.eventType = '';
        return null;
      }
      const event = { event: this.eventType || 'message', data: this.dataLines.join('\n'), id: this.lastId };
      this.dataLines = [];
      this.eventType = '';
      return event;
    }
    if (line.startsWith(':')) return null; // comment / keep-alive
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'data':
        this.dataLines.push(value);
        break;
      case 'event':
        this.eventType = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastId = value;
        break;
      default:
        break; // "retry" and unknown fields: nothing to do for a one-shot stream
    }
    return null;
  }
}

/** Calls onIdle once when kick() has not been called for idleMs; stop() disarms it.
 *
 * The gateway sends a heartbeat while an answer is slow but its backend is alive, so a stream
 * that stays silent past the bound is hung (a frozen chat service, a dead proxy). */
export class IdleTimer {
  private timer: ReturnType<typeof setTimeout> | null = null;
  fired = false;

  constructor(
    private readonly idleMs: number,
    private readonly onIdle: () => void,
  ) {}

  kick(): void {
    if (this.fired) return;
    this.stop();
    this.timer = setTimeout(() => {
      this.timer = null;
      this.fired = true;
      this.onIdle();
    }, this.idleMs);
  }

  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** How long the web app waits on a silent stream: the gateway's own bound plus two heartbeats
 * (the gateway ends a stream whose backend stopped answering after stallS; this catches the rest). */
export function streamIdleMs(stallS: number | undefined, heartbeatS: number | undefined): number {
  const stall = typeof stallS === 'number' && stallS > 0 ? stallS : 45;
  const heartbeat = typeof heartbeatS === 'number' && heartbeatS > 0 ? heartbeatS : 15;
  return Math.round((stall + 2 * heartbeat) * 1000);
}

/** Read a byte stream as SSE, calling onEvent for each event; resolves when the stream ends.
 * onActivity is called for every piece read (heartbeat comments included). */
export async function readSse(
  body: ReadableStream<Uint8Array>,
  onEvent: (event: SseEvent) => void,
  signal?: AbortSignal,
  onActivity?: () => void,
): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder('utf-8');
  const parser = new SseParser();
  const onAbort = () => {
    reader.cancel().catch(() => undefined);
  };
  signal?.addEventListener('abort', onAbort);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      onActivity?.();
      for (const event of parser.feed(decoder.decode(value, { stream: true }))) onEvent(event);
    }
    for (const event of parser.feed(decoder.decode())) onEvent(event);
    parser.end();
  } catch (error) {
    // A handler refused an event (an error event, a malformed one): stop the download too.
    reader.cancel().catch(() => undefined);
    throw error;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    reader.releaseLock();
  }
}

/** Parse each event's data as JSON; a malformed event is an error, not silently skipped. */
export function parseJsonEvent<T>(event: SseEvent): T {
  try {
    return JSON.parse(event.data) as T;
  } catch {
    throw new Error(`malformed stream event: ${event.data.slice(0, 80)}`);
  }
}

/** The event the gateway ends a stream with when it restarts (drains, on SIGTERM): its data is the
 * error body (reason SERVER_DRAINING, args.retry_after_s); the stream may be opened again after it. */
export const CLOSE_EVENT = 'close';

/** A stream the gateway closed for a restart: open it again after retryAfterMs. */
export class StreamClosed extends Error {
  constructor(
    readonly retryAfterMs: number,
    readonly body: unknown,
  ) {
    super('the server closed the stream to restart');
    this.name = 'StreamClosed';
  }
}

/** The StreamClosed a closing event stands for; null for any other event. */
export function closingEvent(event: SseEvent): StreamClosed | null {
  if (event.event !== CLOSE_EVENT) return null;
  let body: unknown = null;
  try {
    body = JSON.parse(event.data);
  } catch {
    body = null;
  }
  const args = (body as { args?: { retry_after_s?: unknown } } | null)?.args;
  const seconds = Number(args?.retry_after_s);
  return new StreamClosed(Number.isFinite(seconds) && seconds >= 1 ? seconds * 1000 : 1000, body);
}

/** Run open() again each time it fails with StreamClosed (the gateway restarting), after the wait
 * the closing event asked for, at most `attempts` times; any other outcome is open()'s own. */
export async function reconnecting(
  open: () => Promise<void>,
  options: { attempts?: number; signal?: AbortSignal; sleep?: (ms: number) => Promise<void> } = {},
): Promise<void> {
  const attempts = options.attempts ?? 5;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  for (let attempt = 0; ; attempt++) {
    try {
      await open();
      return;
    } catch (error) {
      if (!(error instanceof StreamClosed) || attempt >= attempts || options.signal?.aborted) throw error;
      await sleep(error.retryAfterMs);
      if (options.signal?.aborted) throw error;
    }
  }
}
