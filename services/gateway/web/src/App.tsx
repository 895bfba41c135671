import { lazy, Suspense, useEffect, useMemo, useState } from 'react';
import { ApiClient, type AuthState } from './api/client';
import { ErrorBoundary } from './components/ErrorBoundary';
import { AppProvider } from './context';
import { useI18n } from './i18n';
import { AuthPage } from './pages/AuthPage';
import { Toolbar } from './components/Toolbar';

// The signed-in workspace (chat, Markdown, documents) is its own chunk: the login screen does
// not wait for it, and it is fetched in the background while the student types a password.
const loadShell = () => import('./Shell');
const Shell = lazy(loadShell);
// A returning student goes straight to the workspace: start fetching it before React even renders.
try {
  if (localStorage.getItem('sa.auth')) void loadShell().catch(() => undefined);
} catch {
  // no storage: the login screen comes first anyway
}

export function App() {
  const client = useMemo(() => new ApiClient(), []);
  const [auth, setAuth] = useState<AuthState | null>(client.current);
  useEffect(() => client.onAuthChange(setAuth), [client]);
  const { lang } = useI18n();
  // The moment the first screen is on the page and answers input: bench/web_bench.py reads it.
  useEffect(() => {
    performance.mark('sa:interactive');
    if (!client.current) {
      const idle = window.requestIdleCallback ?? ((callback: () => void) => window.setTimeout(callback, 200));
      idle(() => void loadShell().catch(() => undefined));
    }
  }, [client]);

  return (
    <ErrorBoundary lang={lang}>
      {auth ? (
        <AppProvider client={client} user={auth.user}>
          <Suspense fallback={<p className="muted pad">…</p>}>
            <Shell onLogout={() => void client.logout()} />
          </Suspense>
        </AppProvider>
      ) : (
        <AuthPage client={client} toolbar={<Toolbar />} />
      )}
    </ErrorBoundary>
  );
}

