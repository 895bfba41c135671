import { ApiError, errorFromEvent, errorFromResponse, type ErrorBody } from './errors';
import { closingEvent, IdleTimer, parseJsonEvent, readSse, reconnecting, StreamClosed, streamIdleMs } from './sse';
import type { GatewayConfig, TokenResponse, User } from './types';

const STORAGE_KEY = 'sa.auth';
// One refresh at a time across this origin's tabs (Web Locks API): refresh tokens are single use,
// so two tabs spending the same one would log each other out.
const REFRESH_LOCK = 'sa.auth.refresh';

export interface AuthState {
  accessToken: string;
  refreshToken: string;
  user: User;
}

function loadAuth(): AuthState | null {
  try {
    const raw = localStorage.getItem(STORAGE_KEY);
    if (!raw) return null;
    const parsed = JSON.parse(raw) as AuthState;
    return parsed.accessToken && parsed.refreshToken ? parsed : null;
  } catch {
    return null;
  }
}

function saveAuth(auth: AuthState | null): void {
  try {
    if (auth) localStorage.setItem(STORAGE_KEY, JSON.stringify(auth));
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    // Private mode without storage: the session lasts as long as the tab.
  }
}

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | number | undefined>;
  signal?: AbortSignal;
  /** Auth endpoints must not trigger a token refresh on 401. */
  noAuth?: boolean;
}

/** The browser's view of the gateway: JSON calls, SSE streams, token refresh. */
export class ApiClient {
  private auth: AuthState | null = loadAuth();
  private refreshing: Promise<boolean> | null = null;
  private configFor: { userId: string; promise: Promise<GatewayConfig> } | null = null;
  /** True after the server refused to renew the session: the login screen says why it is back. */
  sessionExpired = false;
  private readonly listeners = new Set<(auth: AuthState | null) => void>();

  constructor(private readonly baseUrl = '') {
    // Another tab signed in, refreshed or logged out: follow it, so this tab never spends a
    // refresh token that tab already used.
    if (typeof window !== 'undefined') {
      window.addEventListener('storage', (event) => {
        if (event.key !== STORAGE_KEY) return;
        const next = loadAuth();
        if (next?.accessToken === this.auth?.accessToken) return;
        this.adopt(next);
      });
    }
  }

  /** Take the session another tab stored, without writing it back. */
  private adopt(auth: AuthState | null): void {
    if (auth?.user.user_id !== this.auth?.user.user_id) this.configFor = null;
    this.auth = auth;
    if (auth) this.sessionExpired = false;
    for (const listener of this.listeners) listener(auth);
  }

  get current(): AuthState | null {
    return this.auth;
  }

  get accessToken(): string {
    return this.auth?.accessToken ?? '';
  }

  onAuthChange(listener: (auth: AuthState | null) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private setAuth(auth: AuthState | null): void {
    if (auth?.user.user_id !== this.auth?.user.user_id) this.configFor = null;
    this.auth = auth;
    saveAuth(auth);
    for (const listener of this.listeners) listener(auth);
  }

  url(path: string, query?: RequestOptions['query']): string {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query ?? {})) if (value !== undefined) params.set(key, String(value));
    const qs = params.toString();
    return `${this.baseUrl}${path}${qs ? `?${qs}` : ''}`;
  }

  async register(email: string, password: string, displayName: string): Promise<User> {
    const tokens = await this.json<TokenResponse>('POST', '/v1/auth/register', {
      body: { email, password, display_name: displayName },
      noAuth: true,
    });
    this.acceptTokens(tokens);
    return tokens.user;
  }

  async login(email: string, password: string): Promise<User> {
    const tokens = await this.json<TokenResponse>('POST', '/v1/auth/login', { body: { email, password }, noAuth: true });
    this.acceptTokens(tokens);
    return tokens.user;
  }

  async logout(): Promise<void> {
    const refreshToken = this.auth?.refreshToken;
    this.setAuth(null);
    if (refreshToken) {
      // Best effort: the local session is gone whatever the server says.
      await this.json('POST', '/v1/auth/logout', { body: { refresh_token: refreshToken }, noAuth: true }).catch(() => undefined);
    }
  }

  private acceptTokens(tokens: TokenResponse, fallbackUser?: User): void {
    const user = tokens.user ?? fallbackUser;
    this.sessionExpired = false;
    this.setAuth({ accessToken: tokens.access_token, refreshToken: tokens.refresh_token, user });
  }

  /** GET /v1/config once per signed-in user (again after a failure): upload cap and role. */
  config(): Promise<GatewayConfig> {
    const userId = this.auth?.user.user_id ?? '';
    if (!this.configFor || this.configFor.userId !== userId) {
      const promise = this.get<GatewayConfig>('/v1/config');
      const entry = { userId, promise };
      this.configFor = entry;
      promise.catch(() => {
        if (this.configFor === entry) this.configFor = null;
      });
    }
    return this.configFor.promise;
  }

  /** Refresh the access token once, however many calls saw the 401 at the same time, in this tab
   * and in the others: under a lock shared by the origin's tabs, a tab that finds a session newer
   * than the one that failed (another tab refreshed meanwhile) takes it instead of refreshing. */
  refresh(): Promise<boolean> {
    if (!this.refreshing) {
      const failed = this.auth;
      // Web Locks need a secure context (https, or localhost); elsewhere the storage event above
      // still moves every tab to the newest tokens, which narrows the race to one moment.
      const locks = typeof navigator !== 'undefined' ? navigator.locks : undefined;
      const run = () => this.refreshUnlocked(failed);
      // (The lock is held until run's promise settles; then() unwraps what request() resolves to.)
      const attempt: Promise<boolean> = locks ? locks.request(REFRESH_LOCK, run).then((result) => result) : run();
      const shared = attempt.finally(() => {
        if (this.refreshing === shared) this.refreshing = null;
      });
      this.refreshing = shared;
    }
    return this.refreshing;
  }

  private async refreshUnlocked(failed: AuthState | null): Promise<boolean> {
    const stored = loadAuth();
    if (stored && failed && stored.user.user_id === failed.user.user_id && stored.refreshToken !== failed.refreshToken) {
      this.adopt(stored);
      return true;
    }
    const auth = stored ?? failed;
    if (!auth) return false;
    try {
      const tokens = await this.json<TokenResponse>('POST', '/v1/auth/refresh', {
        body: { refresh_token: auth.refreshToken },
        noAuth: true,
      });
      this.acceptTokens(tokens, auth.user);
      return true;
    } catch (error) {
      // Another tab spent this refresh token first (no Web Locks here): take its new session.
      const latest = loadAuth();
      if (latest && latest.refreshToken !== auth.refreshToken) {
        this.adopt(latest);
        return true;
      }
      // Only a definite "no" ends the session; a network blip keeps it for the next try.
      if (error instanceof ApiError && error.kind === 'http' && error.status >= 400 && error.status < 500) {
        this.sessionExpired = true;
        this.setAuth(null);
      }
      return false;
    }
  }

  /** fetch with the bearer token, one refresh-and-retry on 401, errors as ApiError. */
  async fetch(method: string, path: string, options: RequestOptions = {}, extraHeaders: Record<string, string> = {}): Promise<Response> {
    const attempt = async (): Promise<Response> => {
      const headers: Record<string, string> = { Accept: 'application/json', ...extraHeaders };
      if (options.body !== undefined) headers['Content-Type'] = 'application/json';
      if (!options.noAuth && this.auth) headers.Authorization = `Bearer ${this.auth.accessToken}`;
      try {
        return await fetch(this.url(path, options.query), {
          method,
          headers,
          body: options.body === undefined ? undefined : JSON.stringify(options.body),
          signal: options.signal,
          credentials: 'same-origin',
        });
      } catch (error) {
        if (error instanceof DOMException && error.name === 'AbortError') throw error;
        throw new ApiError('network', 0, 'NETWORK', error instanceof Error ? error.message : String(error));
      }
    };
    let response = await attempt();
    if (response.status === 401 && !options.noAuth && this.auth) {
      if (await this.refresh()) response = await attempt();
    }
    if (!response.ok) {
      throw errorFromResponse(response.status, await response.text().catch(() => ''), response.headers);
    }
    return response;
  }

  async json<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.fetch(method, path, options);
    const text = await response.text();
    return (text ? JSON.parse(text) : {}) as T;
  }

  get<T>(path: string, query?: RequestOptions['query'], signal?: AbortSignal): Promise<T> {
    return this.json<T>('GET', path, { query, signal });
  }

  /** How long a stream may stay silent before the web app gives up on it (from GET /v1/config). */
  async streamIdleMs(): Promise<number> {
    const config = await this.config().catch(() => null);
    return streamIdleMs(config?.stream_stall_timeout_s, config?.sse_heartbeat_s);
  }

  /** Open an SSE endpoint and call onEvent with each event's JSON until the stream ends.
   *
   * An ``event: error`` from the gateway becomes an ApiError with its reason. With idleMs, a
   * stream (or its response) silent that long, heartbeats included, ends with STREAM_STALLED.
   * A stream the gateway closed to restart (``event: close``) is opened again, after the wait it
   * asked for, when it is a GET (a watch); a POST (an answer) is not sent twice: it fails with
   * the closing event's reason (SERVER_DRAINING), and the question goes back to the box. */
  async stream<T>(
    method: string,
    path: string,
    options: RequestOptions,
    onEvent: (event: T) => void,
    idleMs = 0,
  ): Promise<void> {
    const once = () => this.streamOnce(method, path, options, onEvent, idleMs);
    try {
      await (method === 'GET' ? reconnecting(once, { signal: options.signal }) : once());
    } catch (error) {
      if (error instanceof StreamClosed) throw errorFromEvent(error.body as ErrorBody);
      throw error;
    }
  }

  private async streamOnce<T>(
    method: string,
    path: string,
    options: RequestOptions,
    onEvent: (event: T) => void,
    idleMs = 0,
  ): Promise<void> {
    const inner = new AbortController();
    const outer = options.signal;
    const forward = () => inner.abort();
    if (outer?.aborted) inner.abort();
    outer?.addEventListener('abort', forward);
    const timer = new IdleTimer(idleMs, () => inner.abort());
    if (idleMs > 0) timer.kick();
    const kick = () => {
      if (idleMs > 0) timer.kick();
    };
    try {
      const response = await this.fetch(method, path, { ...options, signal: inner.signal }, { Accept: 'text/event-stream' });
      if (!response.body) throw new ApiError('stream', response.status, 'NO_BODY', 'empty stream');
      kick();
      await readSse(
        response.body,
        (event) => {
          if (event.event === 'error') throw errorFromEvent(parseJsonEvent<ErrorBody>(event));
          const closed = closingEvent(event);
          if (closed) throw closed;
          onEvent(parseJsonEvent<T>(event));
        },
        inner.signal,
        kick,
      );
    } catch (error) {
      if (!timer.fired || outer?.aborted) throw error;
    } finally {
      timer.stop();
      outer?.removeEventListener('abort', forward);
    }
    if (timer.fired && !outer?.aborted) {
      throw new ApiError('stream', 0, 'DEADLINE_EXCEEDED', `no data for ${Math.round(idleMs / 1000)} s`, '', null, 'STREAM_STALLED');
    }
  }
}
