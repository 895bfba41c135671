import { describe, expect, it, vi } from 'vitest';
import { closingEvent, readSse, reconnecting, StreamClosed, type SseEvent } from './sse';
import { ApiError, describeError, errorFromEvent, type ErrorBody } from './errors';

const CLOSE =
  'event: close\ndata: {"code":"UNAVAILABLE","message":"the gateway is restarting; try again","request_id":"r1","reason":"SERVER_DRAINING","args":{"retry_after_s":"5"}}\n\n';

function streamOf(text: string): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(text));
      controller.close();
    },
  });
}

describe('the gateway closing a stream to restart', () => {
  it('is read as StreamClosed with the wait it asked for, after the data before it', async () => {
    const seen: string[] = [];
    const reading = readSse(streamOf('data: {"n":1}\n\n' + CLOSE + 'data: {"n":2}\n\n'), (event: SseEvent) => {
      const closed = closingEvent(event);
      if (closed) throw closed;
      seen.push(event.data);
    });
    const error = await reading.catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StreamClosed);
    expect((error as StreamClosed).retryAfterMs).toBe(5000);
    expect(seen).toEqual(['{"n":1}']); // nothing after the closing event
    // Said to the student from its reason, in their language.
    const apiError = errorFromEvent((error as StreamClosed).body as ErrorBody);
    expect(apiError).toBeInstanceOf(ApiError);
    expect(apiError.reason).toBe('SERVER_DRAINING');
    expect(describeError(apiError, (key) => key)).toBe('reason.SERVER_DRAINING');
  });

  it('waits at least a second when the event names no wait, and ignores other events', () => {
    expect(closingEvent({ event: 'close', data: 'not json', id: '' })?.retryAfterMs).toBe(1000);
    expect(closingEvent({ event: 'message', data: '{}', id: '' })).toBeNull();
    expect(closingEvent({ event: 'error', data: '{}', id: '' })).toBeNull();
  });

  it('reconnects after the wait, until the stream ends without closing', async () => {
    const sleep = vi.fn(async () => undefined);
    let opened = 0;
    await reconnecting(
      async () => {
        opened += 1;
        if (opened < 3) throw new StreamClosed(2000, null);
      },
      { sleep },
    );
    expect(opened).toBe(3);
    expect(sleep.mock.calls).toEqual([[2000], [2000]]);
  });

  it('gives up after its attempts, and lets other errors and an abort through at once', async () => {
    const sleep = vi.fn(async () => undefined);
    const closed = new StreamClosed(1000, null);
    await expect(reconnecting(async () => Promise.reject(closed), { attempts: 2, sleep })).rejects.toBe(closed);
    expect(sleep).toHaveBeenCalledTimes(2);

    const other = new Error('boom');
    await expect(reconnecting(async () => Promise.reject(other), { sleep })).rejects.toBe(other);

    const controller = new AbortController();
    controller.abort();
    let opened = 0;
    const open = async () => {
      opened += 1;
      throw closed;
    };
    await expect(reconnecting(open, { signal: controller.signal, sleep })).rejects.toBe(closed);
    expect(opened).toBe(1);
  });
});
