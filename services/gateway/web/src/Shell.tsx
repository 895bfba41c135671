import { lazy, Suspense, useEffect, useState } from 'react';
import { Toolbar } from './components/Toolbar';
import { ErrorBoundary } from './components/ErrorBoundary';
import { SessionsSidebar } from './components/SessionsSidebar';
import { useApp } from './context';
import { useI18n } from './i18n';
import { ChatPage } from './pages/ChatPage';
import { DocumentsPage } from './pages/DocumentsPage';
import { QuizPage } from './pages/QuizPage';
import { StudyPage } from './pages/StudyPage';
import { useDueCount } from './lib/dueCount';
import { chatHref, navigate, useRoute } from './router';

// Administrators' page: its charts load only when someone opens it.
const DashboardPage = lazy(() => import('./pages/DashboardPage'));
// The source viewer: pdf.js comes with it, only when a citation is opened.
const ViewerPage = lazy(() => import('./pages/ViewerPage'));

export default function Shell({ onLogout }: { onLogout: () => void }) {
  const { t, lang } = useI18n();
  const route = useRoute();
  const { isAdmin, client } = useApp();
  const due = useDueCount(client, route);
  const [sidebarOpen, setSidebarOpen] = useState(false);
  useEffect(() => {
    performance.mark('sa:shell');
  }, []);

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
          {/* With the count of cards due now; a screen reader hears "Ôn tập 4 thẻ đến hạn" (the
              visible text stays the start of the link's name). */}
          <a
            href="#/study"
            className={route.page === 'study' || route.page === 'quiz' ? 'active' : ''}
            aria-current={route.page === 'study' || route.page === 'quiz' ? 'page' : undefined}
            data-testid="nav-study"
          >
            {t('nav.study')}
            {due ? (
              <>
                {' '}
                <span className="nav-badge" data-testid="nav-due">
                  {due}
                </span>
                <span className="visually-hidden"> {t('nav.due')}</span>
              </>
            ) : null}
          </a>
          {/* Administrators only (the gateway answers 403 to anyone else). */}
          {isAdmin && navLink('dashboard', '#/dashboard', t('nav.dashboard'))}
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
            {route.page === 'study' && <StudyPage view={route.studyView ?? 'decks'} deckId={route.deckId ?? ''} />}
            {route.page === 'quiz' && <QuizPage quizId={route.quizId ?? ''} deckId={route.deckId ?? ''} />}
            {route.page === 'viewer' && (
              <Suspense fallback={<p className="muted pad">{t('common.loading')}</p>}>
                <ViewerPage fileId={route.fileId ?? ''} chunkId={route.chunkId ?? ''} pageNumber={route.pageNumber ?? 0} />
              </Suspense>
            )}
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
