// One error type for everything the API can do wrong, so every screen can explain it.
import { dictionaries } from '../i18n';

export type ErrorKind = 'network' | 'http' | 'stream';

export class ApiError extends Error {
  readonly kind: ErrorKind;
  readonly status: number;
  readonly code: string;
  readonly requestId: string;
  readonly retryAfterSeconds: number | null;
  /** The gateway's stable name of what went wrong (EMAIL_TAKEN, ...), '' when it names none. */
  readonly reason: string;
  /** The values the reason's sentence needs (all strings, as the gateway sends them). */
  readonly args: Record<string, string>;

  constructor(
    kind: ErrorKind,
    status: number,
    code: string,
    message: string,
    requestId = '',
    retryAfterSeconds: number | null = null,
    reason = '',
    args: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfterSeconds = retryAfterSeconds;
    this.reason = reason;
    this.args = args;
  }
}

/** The error body's fields, however it came (a response body or an SSE error event). */
export interface ErrorBody {
  code?: unknown;
  message?: unknown;
  request_id?: unknown;
  reason?: unknown;
  args?: unknown;
}

function stringArgs(value: unknown): Record<string, string> {
  const args: Record<string, string> = {};
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
      if (typeof item === 'string' || typeof item === 'number') args[key] = String(item);
    }
  }
  return args;
}

/** An ApiError from an SSE ``event: error`` (or a ``{error}`` event) the gateway sent mid-stream. */
export function errorFromEvent(body: ErrorBody | null | undefined): ApiError {
  const value = body ?? {};
  return new ApiError(
    'stream',
    0,
    value.code === undefined ? '' : String(value.code),
    typeof value.message === 'string' && value.message ? value.message : 'error',
    typeof value.request_id === 'string' ? value.request_id : '',
    null,
    typeof value.reason === 'string' ? value.reason : '',
    stringArgs(value.args),
  );
}

/** Retry-After is either seconds or an HTTP date. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil((date - now) / 1000));
}

/** Build an ApiError from a non-2xx response body ({code, message, request_id, reason, args}) and headers. */
export function errorFromResponse(status: number, bodyText: string, headers: { get(name: string): string | null }): ApiError {
  let code = '';
  let message = '';
  let requestId = headers.get('x-request-id') ?? '';
  let reason = '';
  let args: Record<string, string> = {};
  try {
    const body = JSON.parse(bodyText) as ErrorBody;
    if (body && typeof body === 'object') {
      if (body.code !== undefined) code = String(body.code);
      if (typeof body.message === 'string') message = body.message;
      if (typeof body.request_id === 'string' && body.request_id) requestId = body.request_id;
      if (typeof body.reason === 'string') reason = body.reason;
      args = stringArgs(body.args);
    }
  } catch {
    // Not JSON (a proxy's error page, say): keep a short, plain-text excerpt.
    message = bodyText.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim().slice(0, 200);
  }
  return new ApiError(
    'http',
    status,
    code,
    message || `HTTP ${status}`,
    requestId,
    parseRetryAfter(headers.get('retry-after')),
    reason,
    args,
  );
}

export type Translate = (key: string, vars?: Record<string, string | number>) => string;

/** The i18n key of a reason the web app knows how to say ('' for one it does not). */
export function reasonKey(reason: string, args: Record<string, string> = {}): string {
  if (!/^[A-Z][A-Z0-9_]*$/.test(reason)) return '';
  // A backend that is down or hung: the chat service is "the assistant" to a student.
  if (reason === 'BACKEND_UNAVAILABLE' || reason === 'BACKEND_NOT_ANSWERING') {
    const chat = (args.service ?? '').split(/,\s*/).includes('chat');
    return `reason.${reason}.${chat ? 'chat' : 'other'}`;
  }
  const key = `reason.${reason}`;
  return key in dictionaries.vi ? key : '';
}

/** What a details disclosure shows: the server's own words and the request id, for a bug report. */
export function errorDetails(error: unknown): { requestId: string; text: string } | null {
  if (!(error instanceof ApiError)) return null;
  const parts = [error.code, error.reason].filter(Boolean).join(' · ');
  const text = [parts, error.message].filter(Boolean).join(': ');
  if (!error.requestId && !text) return null;
  return { requestId: error.requestId, text };
}

/** The sentence a student sees for an error, in the UI's language: never the server's English
 * text nor the request id (both go to errorDetails). */
export function describeError(error: unknown, t: Translate): string {
  if (error instanceof ApiError) {
    if (error.kind === 'network') return t('err.network');
    const key = reasonKey(error.reason, error.args);
    if (key) return t(key, error.args);
    // The gateway answers 503 UNAVAILABLE while a backend service is down or not yet reached.
    if (error.code === 'UNAVAILABLE') return t('reason.BACKEND_UNAVAILABLE.other');
    if (error.kind === 'stream') return t('err.stream');
    switch (error.status) {
      case 400:
        return t('err.badRequest');
      case 401:
        return t('err.unauthenticated');
      case 403:
        return t('err.forbidden');
      case 404:
        // Older gateways answered 404 "no route" while the backend that owns the route was down.
        return /^no route\b/i.test(error.message) ? t('reason.BACKEND_UNAVAILABLE.other') : t('err.notFound');
      case 409:
        return t('err.conflict');
      case 413:
        return t('err.tooLarge');
      case 415:
        return t('err.wrongType');
      case 429:
        return error.retryAfterSeconds !== null
          ? t('err.rateLimitedRetry', { seconds: error.retryAfterSeconds })
          : t('err.rateLimited');
      case 502:
      case 503:
        return t('reason.BACKEND_UNAVAILABLE.other');
      case 504:
        return t('reason.BACKEND_TIMEOUT');
      default:
        return t('err.server', { status: error.status });
    }
  }
  if (error instanceof DOMException && error.name === 'AbortError') return t('err.aborted');
  if (error instanceof Error) return error.message;
  return String(error);
}
