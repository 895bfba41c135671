import { useState, type FormEvent } from 'react';
import type { ApiClient } from '../api/client';
import { ErrorBanner } from '../components/ErrorBanner';
import { useI18n } from '../i18n';

export function AuthPage({ client, toolbar }: { client: ApiClient; toolbar: React.ReactNode }) {
  const { t } = useI18n();
  const [mode, setMode] = useState<'login' | 'register'>('login');
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [displayName, setDisplayName] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mode === 'register') await client.register(email.trim(), password, displayName.trim());
      else await client.login(email.trim(), password);
    } catch (caught) {
      setError(caught);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="auth-page">
      <div className="auth-toolbar">{toolbar}</div>
      <form className="auth-card" onSubmit={submit} aria-label={t(mode === 'login' ? 'auth.login' : 'auth.register')}>
        <h1>{t('app.title')}</h1>
        <p className="muted">{t('auth.welcome')}</p>
        <h2>{t(mode === 'login' ? 'auth.login' : 'auth.register')}</h2>
        {mode === 'register' && (
          <label>
            <span>
              {t('auth.displayName')} <span className="required-mark" aria-hidden="true">*</span>
            </span>
            <input
              name="display_name"
              required
              aria-required="true"
              value={displayName}
              onChange={(e) => setDisplayName(e.target.value)}
              autoComplete="name"
              maxLength={100}
            />
          </label>
        )}
        <label>
          {t('auth.email')}
          <input
            name="email"
            type="email"
            required
            value={email}
            onChange={(e) => setEmail(e.target.value)}
            autoComplete="email"
          />
        </label>
        <label>
          {t('auth.password')}
          <input
            name="password"
            type="password"
            required
            minLength={mode === 'register' ? 8 : undefined}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            autoComplete={mode === 'register' ? 'new-password' : 'current-password'}
          />
          {mode === 'register' && <small className="muted">{t('auth.passwordHint')}</small>}
        </label>
        {client.sessionExpired && !error && <p className="notice" role="status">{t('auth.expired')}</p>}
        <ErrorBanner error={error} />
        <button type="submit" className="primary" disabled={busy}>
          {t(mode === 'login' ? 'auth.login' : 'auth.register')}
        </button>
        <button
          type="button"
          className="link"
          onClick={() => {
            setMode(mode === 'login' ? 'register' : 'login');
            setError(null);
          }}
        >
          {t(mode === 'login' ? 'auth.noAccount' : 'auth.haveAccount')}
        </button>
      </form>
    </div>
  );
}
