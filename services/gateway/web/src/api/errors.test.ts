import { describe, expect, it } from 'vitest';
import { dictionaries, translate } from '../i18n';
import { ApiError, describeError, errorDetails, errorFromEvent, errorFromResponse, parseRetryAfter, reasonKey } from './errors';

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
    expect(describeError(error, t)).toMatch(/restarting/);
  });

  it('says plainly when the server cannot be reached, or a file is too large or of a wrong type', () => {
    expect(describeError(new ApiError('network', 0, 'NETWORK', 'Failed to fetch'), t)).toMatch(/Cannot reach the server/);
    expect(describeError(errorFromResponse(413, '{}', headers({})), t)).toBe('The file is too large.');
    expect(describeError(errorFromResponse(415, '{}', headers({})), t)).toBe('This file type is not supported.');
    expect(translate('vi', 'err.network')).toMatch(/Không kết nối/);
    // A route the gateway cannot serve because its backend is down is not "not found".
    const noRoute = errorFromResponse(404, '{"code":"NOT_FOUND","message":"no route for GET /v1/agents"}', headers({}));
    expect(describeError(noRoute, t)).toMatch(/restarting/);
    expect(describeError(errorFromResponse(404, '{"message":"file not found"}', headers({})), t)).toBe('Not found.');
    const unreached = errorFromResponse(
      503,
      '{"code":"UNAVAILABLE","message":"no route for GET /v1/agents while chat cannot be reached","request_id":"r9"}',
      headers({ 'retry-after': '2' }),
    );
    // The gateway names the backend: chat down is "the assistant is restarting", the request id is kept for details.
    expect(describeError(unreached, t)).toBe('A service is restarting. Please try again in a moment.');
    expect(errorDetails(unreached)).toEqual({ requestId: 'r9', text: 'UNAVAILABLE: no route for GET /v1/agents while chat cannot be reached' });
    // The code decides even when a proxy in between changed the status.
    expect(describeError(errorFromResponse(500, '{"code":"UNAVAILABLE","message":"x"}', headers({})), t)).toMatch(/restarting/);
  });

  it('says a reason in the UI language with its arguments, never the server text or request id', () => {
    const taken = errorFromResponse(
      409,
      '{"code":"ALREADY_EXISTS","message":"a user with this email already exists","request_id":"r2","reason":"EMAIL_TAKEN","args":{}}',
      headers({}),
    );
    expect(taken).toMatchObject({ reason: 'EMAIL_TAKEN', requestId: 'r2' });
    const vi = describeError(taken, (key, vars) => translate('vi', key, vars));
    expect(vi).toBe('Email này đã có tài khoản. Hãy đăng nhập hoặc dùng email khác.');
    expect(vi).not.toMatch(/already exists|r2/);
    expect(errorDetails(taken)).toEqual({ requestId: 'r2', text: 'ALREADY_EXISTS · EMAIL_TAKEN: a user with this email already exists' });

    const short = errorFromResponse(
      400,
      '{"code":"INVALID_ARGUMENT","message":"password must be 8 to 256 characters","reason":"PASSWORD_LENGTH","args":{"min":"8","max":"256"}}',
      headers({}),
    );
    expect(describeError(short, t)).toBe('The password must be 8 to 256 characters long.');
    // A wrong password is not an expired session.
    const wrong = errorFromResponse(401, '{"code":"UNAUTHENTICATED","message":"invalid email or password","reason":"INVALID_CREDENTIALS"}', headers({}));
    expect(describeError(wrong, t)).toBe('Wrong email or password.');
    expect(describeError(errorFromResponse(401, '{"code":"UNAUTHENTICATED"}', headers({})), t)).toMatch(/session has expired/);
    // An unknown reason (a newer gateway) falls back to the status, and bad args are dropped.
    const unknown = errorFromResponse(400, '{"message":"x","reason":"SOMETHING_NEW","args":{"a":{"b":1}}}', headers({}));
    expect(unknown.args).toEqual({});
    expect(describeError(unknown, t)).toBe('The request is not valid.');
    expect(reasonKey('not a reason')).toBe('');
  });

  it('tells the assistant restarting from a hung one, for HTTP errors and stream events alike', () => {
    const down = errorFromResponse(503, '{"code":"UNAVAILABLE","message":"service unavailable","reason":"BACKEND_UNAVAILABLE","args":{"service":"chat"}}', headers({}));
    expect(describeError(down, t)).toBe('The assistant is restarting. Please try again in a moment.');
    expect(describeError(down, (key, vars) => translate('vi', key, vars))).toBe('Trợ lý đang khởi động lại. Vui lòng thử lại sau giây lát.');
    const hung = errorFromEvent({ code: 'UNAVAILABLE', message: 'chat stopped answering', request_id: 'r3', reason: 'BACKEND_NOT_ANSWERING', args: { service: 'chat' } });
    expect(hung).toMatchObject({ kind: 'stream', requestId: 'r3' });
    expect(describeError(hung, t)).toMatch(/^The assistant is not answering/);
    expect(describeError(new ApiError('stream', 0, 'DEADLINE_EXCEEDED', 'no data', '', null, 'STREAM_STALLED'), t)).toMatch(/still in the box/);
    // A stream error with nothing known about it still says something the student can act on.
    expect(describeError(errorFromEvent({ code: 'INTERNAL', message: 'internal error' }), t)).toBe('The answer stream broke off. Please try again.');
    // Every reason sentence exists in both languages.
    for (const key of Object.keys(dictionaries.vi).filter((k) => k.startsWith('reason.'))) {
      expect(dictionaries.en[key as keyof typeof dictionaries.en]).toBeTruthy();
    }
  });
});
