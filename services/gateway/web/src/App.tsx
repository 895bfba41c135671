import { useEffect, useMemo, useState } from 'react';
import { ApiClient, type AuthState } from './api/client';
import { ErrorBoundary } from './components/ErrorBoundary';
import { AppProvider } from './context';
import { useI18n } from './i18n';
import { AuthPage } from './pages/AuthPage';
import { Toolbar } from './components/Toolbar';

// The signed-in workspace (chat, Markdown, documents) is its own chunk: the login screen does
// not wait for it, and it is fetched in the background while the student types a password.
// Not React.lazy: React 19 holds a revealed Suspense boundary back by up to 300 ms, which a
// returning student would see on every first load. main.tsx awaits this when a session is stored.
type ShellComponent = typeof import('./Shell').default;
let loadedShell: ShellComponent | null = null;

export function loadShell(): Promise<ShellComponent> {
  return import('./Shell').then((module) => (loadedShell = module.default));
}

function useShell(needed: boolean): ShellComponent | null {
  const [shell, setShell] = useState<ShellComponent | null>(() => loadedShell);
  const [failed, setFailed] = useState<unknown>(null);
  useEffect(() => {
    if (!needed || shell) return;
    let live = true;
    loadShell()
      .then((component) => live && setShell(() => component))
      .catch((error) => live && setFailed(error));
    return () => {
      live = false;
    };
  }, [needed, shell]);
  if (failed) throw failed; // the error boundary says so and offers a reload
  return shell;
}

export function App() {
  const client = useMemo(() => new ApiClient(), []);
  const [auth, setAuth] = useState<AuthState | null>(client.current);
  useEffect(() => client.onAuthChange(setAuth), [client]);
  const { lang } = useI18n();
  const Shell = useShell(auth !== null);
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
          {Shell ? <Shell onLogout={() => void client.logout()} /> : <p className="muted pad">…</p>}
        </AppProvider>
      ) : (
        <AuthPage client={client} toolbar={<Toolbar />} />
      )}
    </ErrorBoundary>
  );
}

