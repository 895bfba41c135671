import { ApiError, errorFromResponse } from './errors';
import { parseJsonEvent, readSse } from './sse';
import type { GatewayConfig, TokenResponse, User } from './types';

const STORAGE_KEY = 'sa.auth';

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

  constructor(private readonly baseUrl = '') {}

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

  /** Refresh the access token once, however many calls saw the 401 at the same time. */
  refresh(): Promise<boolean> {
    if (!this.refreshing) {
      const auth = this.auth;
      this.refreshing = (async () => {
        if (!auth) return false;
        try {
          const tokens = await this.json<TokenResponse>('POST', '/v1/auth/refresh', {
            body: { refresh_token: auth.refreshToken },
            noAuth: true,
          });
          this.acceptTokens(tokens, auth.user);
          return true;
        } catch (error) {
          // Only a definite "no" ends the session; a network blip keeps it for the next try.
          if (error instanceof ApiError && error.kind === 'http' && error.status >= 400 && error.status < 500) {
            this.sessionExpired = true;
            this.setAuth(null);
          }
          return false;
        } finally {
          this.refreshing = null;
        }
      })();
    }
    return this.refreshing;
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

  /** Open an SSE endpoint and call onEvent with each event's JSON until the stream ends. */
  async stream<T>(
    method: string,
    path: string,
    options: RequestOptions,
    onEvent: (event: T) => void,
  ): Promise<void> {
    const response = await this.fetch(method, path, options, { Accept: 'text/event-stream' });
    if (!response.body) throw new ApiError('stream', response.status, 'NO_BODY', 'empty stream');
    await readSse(response.body, (event) => onEvent(parseJsonEvent<T>(event)), options.signal);
  }
}
