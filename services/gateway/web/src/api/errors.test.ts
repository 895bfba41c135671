import { describe, expect, it } from 'vitest';
import { translate } from '../i18n';
import { ApiError, describeError, errorFromResponse, parseRetryAfter } from './errors';

const headers = (values: Record<string, string>) => ({ get: (name: string) => values[name.toLowerCase()] ?? null });
const t = (key: string, vars?: Record<string, string | number>) => translate('en', key, vars);

describe('errors', () => {
  it('reads the gateway error body and Retry-After', () => {
    const error = errorFromResponse(429, '{"code":"RESOURCE_EXHAUSTED","message":"slow down","request_id":"r1"}', headers({ 'retry-after': '7' }));
    expect(error).toMatchObject({ status: 429, code: 'RESOURCE_EXHAUSTED', message: 'slow down', requestId: 'r1', retryAfterSeconds: 7 });
    expect(describeError(error, t)).toBe('Too many requests. Try again in 7 s.');
  });

  it('parses an HTTP-date Retry-After', () => {
    expect(parseRetryAfter(new Date(10_000 + 30_000).toUTCString(), 10_000)).toBe(30);
    expect(parseRetryAfter('soon')).toBeNull();
  });

  it('reduces an HTML error page to a short text', () => {
    const error = errorFromResponse(502, '<html><body><h1>Bad gateway</h1></body></html>', headers({}));
    expect(error.message).toBe('Bad gateway');
    expect(describeError(error, t)).toMatch(/temporarily unavailable/);
  });

  it('says plainly when the server cannot be reached, or a file is too large or of a wrong type', () => {
    expect(describeError(new ApiError('network', 0, 'NETWORK', 'Failed to fetch'), t)).toMatch(/Cannot reach the server/);
    expect(describeError(errorFromResponse(413, '{}', headers({})), t)).toBe('The file is too large.');
    expect(describeError(errorFromResponse(415, '{}', headers({})), t)).toBe('This file type is not supported.');
    expect(translate('vi', 'err.network')).toMatch(/Không kết nối/);
    // A route the gateway cannot serve because its backend is down is not "not found".
    const noRoute = errorFromResponse(404, '{"code":"NOT_FOUND","message":"no route for GET /v1/agents"}', headers({}));
    expect(describeError(noRoute, t)).toMatch(/temporarily unavailable/);
    expect(describeError(errorFromResponse(404, '{"message":"file not found"}', headers({})), t)).toBe('Not found.');
    const unreached = errorFromResponse(
      503,
      '{"code":"UNAVAILABLE","message":"no route for GET /v1/agents while chat cannot be reached","request_id":"r9"}',
      headers({ 'retry-after': '2' }),
    );
    expect(describeError(unreached, t)).toBe('The server is temporarily unavailable. Please try again later. (request id: r9)');
    // The code decides even when a proxy in between changed the status.
    expect(describeError(errorFromResponse(500, '{"code":"UNAVAILABLE","message":"x"}', headers({})), t)).toMatch(/temporarily unavailable/);
  });
});
