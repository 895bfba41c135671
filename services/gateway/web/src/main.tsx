import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { App, loadShell } from './App';
import { ErrorBoundary } from './components/ErrorBoundary';
import { I18nProvider } from './i18n';
import './styles.css';

function render() {
  createRoot(document.getElementById('root')!).render(
    <StrictMode>
      <ErrorBoundary>
        <I18nProvider>
          <App />
        </I18nProvider>
      </ErrorBoundary>
    </StrictMode>,
  );
}

let signedIn = false;
try {
  signedIn = Boolean(localStorage.getItem('sa.auth'));
} catch {
  // no storage: not signed in
}
// A returning student: fetch the workspace first, then paint it at once (no loading flash).
if (signedIn) loadShell().then(render, render);
else render();
