// One error type for everything the API can do wrong, so every screen can explain it.

export type ErrorKind = 'network' | 'http' | 'stream';

export class ApiError extends Error {
  readonly kind: ErrorKind;
  readonly status: number;
  readonly code: string;
  readonly requestId: string;
  readonly retryAfterSeconds: number | null;

  constructor(
    kind: ErrorKind,
    status: number,
    code: string,
    message: string,
    requestId = '',
    retryAfterSeconds: number | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfterSeconds = retryAfterSeconds;
  }
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

/** Build an ApiError from a non-2xx response body ({code, message, request_id}) and headers. */
export function errorFromResponse(status: number, bodyText: string, headers: { get(name: string): string | null }): ApiError {
  let code = '';
  let message = '';
  let requestId = headers.get('x-request-id') ?? '';
  try {
    const body = JSON.parse(bodyText) as { code?: unknown; message?: unknown; request_id?: unknown };
    if (body && typeof body === 'object') {
      if (body.code !== undefined) code = String(body.code);
      if (typeof body.message === 'string') message = body.message;
      if (typeof body.request_id === 'string' && body.request_id) requestId = body.request_id;
    }
  } catch {
    // Not JSON (a proxy's error page, say): keep a short, plain-text excerpt.
    message = bodyText.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim().slice(0, 200);
  }
  return new ApiError('http', status, code, message || `HTTP ${status}`, requestId, parseRetryAfter(headers.get('retry-after')));
}

export type Translate = (key: string, vars?: Record<string, string | number>) => string;

/** The sentence a student sees for an error. */
export function describeError(error: unknown, t: Translate): string {
  if (error instanceof ApiError) {
    if (error.kind === 'network') return t('err.network');
    if (error.kind === 'stream') return t('err.stream', { message: error.message });
    const withId = (text: string) => (error.requestId ? `${text} (${t('err.requestId')}: ${error.requestId})` : text);
    // The gateway answers 503 UNAVAILABLE while a backend service is down or not yet reached.
    if (error.code === 'UNAVAILABLE') return withId(t('err.unavailable'));
    switch (error.status) {
      case 400:
        return withId(t('err.badRequest', { message: error.message }));
      case 401:
        return t('err.unauthenticated');
      case 403:
        return t('err.forbidden');
      case 404:
        // Older gateways answered 404 "no route" while the backend that owns the route was down.
        return /^no route\b/i.test(error.message) ? withId(t('err.unavailable')) : t('err.notFound');
      case 409:
        return withId(t('err.conflict', { message: error.message }));
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
      case 504:
        return withId(t('err.unavailable'));
      default:
        return withId(t('err.server', { status: error.status, message: error.message }));
    }
  }
  if (error instanceof DOMException && error.name === 'AbortError') return t('err.aborted');
  if (error instanceof Error) return error.message;
  return String(error);
}
