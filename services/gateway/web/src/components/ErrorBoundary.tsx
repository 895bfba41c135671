import { Component, type ReactNode } from 'react';
import { translate, type Lang } from '../i18n';

interface State {
  error: Error | null;
}

/** Never a blank screen: a render error shows a message and a way out. */
export class ErrorBoundary extends Component<{ children: ReactNode; lang?: Lang }, State> {
  state: State = { error: null };

  static getDerivedStateFromError(error: Error): State {
    return { error };
  }

  render() {
    if (!this.state.error) return this.props.children;
    const lang = this.props.lang ?? (document.documentElement.lang === 'en' ? 'en' : 'vi');
    return (
      <div className="crash" role="alert">
        <h2>{translate(lang, 'err.crash')}</h2>
        <pre>{this.state.error.message}</pre>
        <button type="button" onClick={() => location.reload()}>
          {translate(lang, 'err.reload')}
        </button>
      </div>
    );
  }
}
