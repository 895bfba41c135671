import { useEffect, useState } from 'react';
import { ApiError, describeError, errorDetails } from '../api/errors';
import { useI18n } from '../i18n';

/** A failure, said plainly in the UI's language; a 429 counts down to when a retry makes sense; the
 * server's own words and the request id wait in a "details" disclosure for a bug report. */
export function ErrorBanner({ error, onRetry, onDismiss }: { error: unknown; onRetry?: () => void; onDismiss?: () => void }) {
  const { t } = useI18n();
  const retryAfter = error instanceof ApiError ? error.retryAfterSeconds : null;
  const [remaining, setRemaining] = useState(retryAfter);
  useEffect(() => {
    setRemaining(retryAfter);
    if (retryAfter === null || retryAfter <= 0) return;
    const started = Date.now();
    const timer = window.setInterval(() => {
      const left = Math.max(0, retryAfter - Math.floor((Date.now() - started) / 1000));
      setRemaining(left);
      if (left === 0) window.clearInterval(timer);
    }, 1000);
    return () => window.clearInterval(timer);
  }, [error, retryAfter]);
  if (!error) return null;
  const text =
    error instanceof ApiError && error.status === 429 && remaining !== null
      ? t('err.rateLimitedRetry', { seconds: remaining })
      : describeError(error, t);
  const details = errorDetails(error);
  return (
    <div className="error-banner" role="alert">
      <span className="error-text">{text}</span>
      {details && (
        <details className="error-details" data-testid="error-details">
          <summary>{t('err.details')}</summary>
          {details.text && <span className="error-detail-text">{details.text}</span>}
          {details.requestId && (
            <span className="error-request-id">
              {t('err.requestId')}: <code>{details.requestId}</code>
            </span>
          )}
        </details>
      )}
      {onRetry && (
        <button type="button" onClick={onRetry} disabled={remaining !== null && remaining > 0}>
          {t('common.retry')}
        </button>
      )}
      {onDismiss && (
        <button type="button" className="ghost" onClick={onDismiss} aria-label={t('common.dismiss')}>
          ×
        </button>
      )}
    </div>
  );
}
