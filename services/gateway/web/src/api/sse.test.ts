import { describe, expect, it, vi } from 'vitest';
import { IdleTimer, parseJsonEvent, readSse, SseParser, streamIdleMs, type SseEvent } from './sse';
import type { ChatEvent } from './types';

function streamOf(chunks: Array<string | Uint8Array>): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(typeof chunk === 'string' ? encoder.encode(chunk) : chunk);
      controller.close();
    },
  });
}

async function collect(chunks: Array<string | Uint8Array>): Promise<SseEvent[]> {
  const events: SseEvent[] = [];
  await readSse(streamOf(chunks), (event) => events.push(event));
  return events;
}

describe('SseParser', () => {
  it('parses one event per blank-line-terminated block', () => {
    const parser = new SseParser();
    const events = parser.feed('data: {"a":1}\n\ndata: {"b":2}\n\n');
    expect(events.map((e) => e.data)).toEqual(['{"a":1}', '{"b":2}']);
    expect(events[0].event).toBe('message');
  });

  it('holds an incomplete event until its blank line arrives', () => {
    const parser = new SseParser();
    expect(parser.feed('data: {"te')).toEqual([]);
    expect(parser.feed('xt":"x"}\n')).toEqual([]);
    expect(parser.feed('\n').map((e) => e.data)).toEqual(['{"text":"x"}']);
  });

  it('joins multi-line data with newlines and strips one leading space only', () => {
    const parser = new SseParser();
    const [event] = parser.feed('data: line one\ndata:  two spaces\ndata:no space\n\n');
    expect(event.data).toBe('line one\n two spaces\nno space');
  });

  it('handles CRLF and lone CR line endings, including a CRLF split across chunks', () => {
    const parser = new SseParser();
    const events = [...parser.feed('data: a\r'), ...parser.feed('\n\r\n'), ...parser.feed('data: b\r\rdata: c\r\n\r\n')];
    expect(events.map((e) => e.data)).toEqual(['a', 'b', 'c']);
  });

  it('ignores comments, keep-alives, retry and unknown fields; keeps event type and id', () => {
    const parser = new SseParser();
    const events = parser.feed(': keep-alive\n\nretry: 100\nfoo: bar\nevent: error\nid: 7\ndata: x\n\n');
    expect(events).toEqual([{ event: 'error', data: 'x', id: '7' }]);
  });

  it('drops an event the stream ends without terminating', async () => {
    const events = await collect(['data: complete\n\n', 'data: cut off']);
    expect(events.map((e) => e.data)).toEqual(['complete']);
  });

  it('decodes UTF-8 characters split across byte chunks', async () => {
    const bytes = new TextEncoder().encode('data: {"delta":{"text":"Học máy"}}\n\n');
    const cut = bytes.indexOf(0xe1) + 1; // inside the multi-byte "ọ"
    expect(cut).toBeGreaterThan(0);
    const events = await collect([bytes.slice(0, cut), bytes.slice(cut)]);
    expect(parseJsonEvent<ChatEvent>(events[0]).delta?.text).toBe('Học máy');
  });

  it('parses a whole chat stream into started, deltas, citations and done, byte by byte', async () => {
    const wire = [
      'data: {"started":{"session_id":"s1","backend":"extractive"}}\n\n',
      'data: {"delta":{"text":"Xin "}}\n\n',
      'data: {"delta":{"text":"chào [1]"}}\n\n',
      'data: {"citations":{"citations":[{"index":1,"file_id":"f1","file_name":"a.pdf","page":3,"snippet":"..."}]}}\n\n',
      'data: {"done":{"message_id":"m1","cached":false}}\n\n',
    ].join('');
    const chunks = Array.from(new TextEncoder().encode(wire)).map((b) => Uint8Array.of(b));
    const parsed = (await collect(chunks)).map((e) => parseJsonEvent<ChatEvent>(e));
    expect(parsed[0].started).toEqual({ session_id: 's1', backend: 'extractive' });
    expect(parsed.filter((e) => e.delta).map((e) => e.delta?.text).join('')).toBe('Xin chào [1]');
    expect(parsed[3].citations?.citations?.[0].page).toBe(3);
    expect(parsed[4].done?.message_id).toBe('m1');
  });

  it('reports malformed JSON instead of skipping it', () => {
    expect(() => parseJsonEvent({ event: 'message', data: '{oops', id: '' })).toThrow(/malformed/);
  });

  it('stops reading when aborted', async () => {
    const encoder = new TextEncoder();
    let pulls = 0;
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulls++;
        controller.enqueue(encoder.encode('data: tick\n\n'));
      },
    });
    const controller = new AbortController();
    const events: SseEvent[] = [];
    await readSse(
      endless,
      (event) => {
        events.push(event);
        if (events.length === 3) controller.abort();
      },
      controller.signal,
    ).catch(() => undefined);
    expect(events.length).toBeGreaterThanOrEqual(3);
    expect(pulls).toBeLessThan(10);
  });
});

describe('IdleTimer', () => {
  it('fires once after the bound with no kick, and a kick starts the bound again', () => {
    vi.useFakeTimers();
    try {
      let fired = 0;
      const timer = new IdleTimer(1000, () => fired++);
      timer.kick();
      vi.advanceTimersByTime(900);
      timer.kick(); // a heartbeat arrived
      vi.advanceTimersByTime(900);
      expect(fired).toBe(0);
      vi.advanceTimersByTime(200);
      expect(fired).toBe(1);
      expect(timer.fired).toBe(true);
      timer.kick(); // too late: a stalled stream stays stalled
      vi.advanceTimersByTime(5000);
      expect(fired).toBe(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it('never fires once stopped', () => {
    vi.useFakeTimers();
    try {
      let fired = 0;
      const timer = new IdleTimer(10, () => fired++);
      timer.kick();
      timer.stop();
      vi.advanceTimersByTime(100);
      expect(fired).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });

  it('waits the gateway bound plus two heartbeats, with defaults when the config is missing', () => {
    expect(streamIdleMs(45, 15)).toBe(75_000);
    expect(streamIdleMs(3, 1)).toBe(5_000);
    expect(streamIdleMs(undefined, undefined)).toBe(75_000);
    expect(streamIdleMs(-1, 0)).toBe(75_000);
  });
});

describe('readSse activity', () => {
  it('reports every piece read, heartbeat comments included', async () => {
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(encoder.encode(': heartbeat\n\n'));
        controller.enqueue(encoder.encode('data: {"a":1}\n\n'));
        controller.close();
      },
    });
    let activity = 0;
    const events: string[] = [];
    await readSse(body, (event) => events.push(event.data), undefined, () => activity++);
    expect(activity).toBe(2);
    expect(events).toEqual(['{"a":1}']);
  });
});
