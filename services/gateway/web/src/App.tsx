import { lazy, Suspense, useEffect, useMemo, useState } from 'react';
import { ApiClient, type AuthState } from './api/client';
import { ErrorBoundary } from './components/ErrorBoundary';
import { SessionsSidebar } from './components/SessionsSidebar';
import { AppProvider } from './context';
import { useI18n } from './i18n';
import { AuthPage } from './pages/AuthPage';
import { ChatPage } from './pages/ChatPage';
import { DocumentsPage } from './pages/DocumentsPage';
import { chatHref, navigate, useRoute } from './router';
import { useTheme } from './theme';

// Administrators' page: its charts load only when someone opens it.
const DashboardPage = lazy(() => import('./pages/DashboardPage'));

function Toolbar() {
  const { t, lang, setLang } = useI18n();
  const [theme, toggleTheme] = useTheme();
  return (
    <div className="toolbar">
      <button type="button" className="ghost" onClick={() => setLang(lang === 'vi' ? 'en' : 'vi')} data-testid="lang-switch">
        {t('lang.switch')}
      </button>
      <button
        type="button"
        className="ghost"
        onClick={toggleTheme}
        data-testid="theme-switch"
        aria-label={t(theme === 'dark' ? 'theme.toLight' : 'theme.toDark')}
        title={t(theme === 'dark' ? 'theme.toLight' : 'theme.toDark')}
      >
        {theme === 'dark' ? '☀' : '☾'}
      </button>
    </div>
  );
}

export function App() {
  const client = useMemo(() => new ApiClient(), []);
  const [auth, setAuth] = useState<AuthState | null>(client.current);
  useEffect(() => client.onAuthChange(setAuth), [client]);
  const { lang } = useI18n();

  return (
    <ErrorBoundary lang={lang}>
      {auth ? (
        <AppProvider client={client} user={auth.user}>
          <Shell onLogout={() => void client.logout()} />
        </AppProvider>
      ) : (
        <AuthPage client={client} toolbar={<Toolbar />} />
      )}
    </ErrorBoundary>
  );
}

function Shell({ onLogout }: { onLogout: () => void }) {
  const { t, lang } = useI18n();
  const route = useRoute();
  const [sidebarOpen, setSidebarOpen] = useState(false);

  // Alt+N starts a new chat from anywhere.
  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      if (event.altKey && !event.ctrlKey && !event.metaKey && (event.key === 'n' || event.key === 'N' || event.code === 'KeyN')) {
        event.preventDefault();
        navigate(chatHref(''));
      }
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, []);

  // Close the phone drawer on any navigation (a new route object comes with every hash change).
  useEffect(() => setSidebarOpen(false), [route]);

  const navLink = (page: typeof route.page, href: string, label: string) => (
    <a href={href} className={route.page === page ? 'active' : ''} aria-current={route.page === page ? 'page' : undefined}>
      {label}
    </a>
  );

  return (
    <div className={`shell ${sidebarOpen ? 'sidebar-open' : ''}`}>
      <header className="topbar">
        <button
          type="button"
          className="ghost menu-button"
          aria-label={t('nav.menu')}
          aria-expanded={sidebarOpen}
          onClick={() => setSidebarOpen((open) => !open)}
        >
          ☰
        </button>
        <a className="brand" href="#/chat">
          {t('app.title')}
        </a>
        <nav className="nav">
          {navLink('chat', '#/chat', t('nav.chat'))}
          {navLink('documents', '#/documents', t('nav.documents'))}
          {navLink('dashboard', '#/dashboard', t('nav.dashboard'))}
        </nav>
        <Toolbar />
        <button type="button" className="ghost" onClick={onLogout} data-testid="logout">
          {t('nav.logout')}
        </button>
      </header>
      <div className="body">
        <aside className="sidebar" aria-label={t('sessions.title')}>
          <SessionsSidebar activeSessionId={route.page === 'chat' ? route.sessionId : ''} />
        </aside>
        {sidebarOpen && <div className="scrim" onClick={() => setSidebarOpen(false)} />}
        <main className="main">
          <ErrorBoundary lang={lang}>
            {route.page === 'chat' && <ChatPage sessionId={route.sessionId} focusMessageId={route.focusMessageId} />}
            {route.page === 'documents' && <DocumentsPage />}
            {route.page === 'dashboard' && (
              <Suspense fallback={<p className="muted pad">{t('common.loading')}</p>}>
                <DashboardPage />
              </Suspense>
            )}
          </ErrorBoundary>
        </main>
      </div>
    </div>
  );
}
