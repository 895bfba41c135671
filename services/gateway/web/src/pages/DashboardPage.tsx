import { useCallback, useEffect, useState } from 'react';
import { ApiError } from '../api/errors';
import type { Alert, Dashboard, EndpointStats, GaugeValue } from '../api/types';
import { BarChart, HISTORY_POINTS, LineChart } from '../components/charts';
import { HistogramCharts, PoolRecommendations } from '../components/DashboardPanels';
import { ErrorBanner } from '../components/ErrorBanner';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { formatTime } from '../lib/format';

const REFRESH_MS = 5000;
const endpointLabel = (e: EndpointStats) => `${e.service ?? ''} ${e.method ?? ''}`.trim();
const gaugeLabel = (g: GaugeValue) => {
  const attributes = Object.entries(g.attributes ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  return attributes ? `${g.name} {${attributes}}` : (g.name ?? '');
};

export default function DashboardPage() {
  const { client } = useApp();
  const { t, lang } = useI18n();
  const [windowSeconds, setWindowSeconds] = useState(300);
  const [dashboard, setDashboard] = useState<Dashboard | null>(null);
  const [alerts, setAlerts] = useState<Alert[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [history, setHistory] = useState<number[][]>([]);
  // Not an administrator: the answer will not change by asking again every few seconds.
  const forbidden = error instanceof ApiError && error.status === 403;

  const load = useCallback(async () => {
    try {
      const [board, alertList] = await Promise.all([
        client.get<Dashboard>('/v1/metrics/dashboard', { window_seconds: windowSeconds }),
        client.get<{ alerts?: Alert[] }>('/v1/metrics/alerts'),
      ]);
      setDashboard(board);
      setAlerts(alertList.alerts ?? []);
      setError(null);
      const endpoints = board.endpoints ?? [];
      const throughput = endpoints.reduce((sum, e) => sum + (e.per_second ?? 0), 0);
      const count = endpoints.reduce((sum, e) => sum + Number(e.count ?? 0), 0);
      const errors = endpoints.reduce((sum, e) => sum + Number(e.errors ?? 0), 0);
      setHistory((h) => [...h, [throughput, count ? (100 * errors) / count : 0]].slice(-HISTORY_POINTS));
    } catch (caught) {
      setError(caught);
    }
  }, [client, windowSeconds]);

  useEffect(() => {
    if (forbidden) return;
    void load();
    const timer = window.setInterval(() => void load(), REFRESH_MS);
    return () => window.clearInterval(timer);
  }, [load, forbidden]);

  const endpoints = [...(dashboard?.endpoints ?? [])].sort((a, b) => Number(b.count ?? 0) - Number(a.count ?? 0)).slice(0, 15);
  const gauges = dashboard?.gauges ?? [];
  const isCache = (g: GaugeValue) => /cache/i.test(g.name ?? '');
  const isPool = (g: GaugeValue) => /pool/i.test(g.name ?? '');
  const isEmbedding = (g: GaugeValue) => /embed/i.test(g.name ?? '');
  const gaugeRows = (list: GaugeValue[]) => list.map((g) => ({ label: gaugeLabel(g), values: [g.value ?? 0] }));

  return (
    <section className="dashboard-page">
      <div className="dash-header">
        <h1>{t('dash.title')}</h1>
        <label>
          {t('dash.window')}{' '}
          <select value={windowSeconds} onChange={(e) => setWindowSeconds(Number(e.target.value))}>
            <option value={60}>1 min</option>
            <option value={300}>5 min</option>
            <option value={900}>15 min</option>
            <option value={3600}>1 h</option>
          </select>
        </label>
        <button type="button" onClick={() => void load()}>
          {t('dash.refresh')}
        </button>
      </div>
      {forbidden ? (
        // Signed in, but not an administrator (the gateway's ADMIN_EMAILS).
        <div className="error-banner" role="alert" data-testid="dash-forbidden">
          <span className="error-text">{t('dash.forbidden')}</span>
        </div>
      ) : error instanceof ApiError && [404, 502, 503, 504].includes(error.status) ? (
        // No metrics route (service not deployed) or no answer from it: say which part is missing.
        <div className="error-banner" role="alert">
          <span className="error-text">{t('dash.unavailable')}</span>
          <button type="button" onClick={() => void load()}>
            {t('common.retry')}
          </button>
        </div>
      ) : (
        <ErrorBanner error={error} onRetry={() => void load()} />
      )}
      {dashboard && (
        <p className="muted small">
          {t('dash.spans', { spans: String(dashboard.spans_received ?? 0), traces: String(dashboard.traces_seen ?? 0) })}
        </p>
      )}
      <div className="dash-grid">
        <article className="card">
          <h2>{t('dash.alerts')}</h2>
          {alerts.length === 0 ? (
            <p className="muted">{t('dash.noData')}</p>
          ) : (
            <ul className="alerts">
              {alerts.map((alert) => (
                <li key={alert.name} className={alert.state === 'ALERT_STATE_FIRING' ? 'firing' : 'ok'}>
                  <strong>{alert.state === 'ALERT_STATE_FIRING' ? t('dash.firing') : t('dash.ok')}</strong> {alert.name}:{' '}
                  {(alert.value ?? 0).toFixed(2)} / {(alert.threshold ?? 0).toFixed(2)}
                  {alert.description ? <span className="muted"> — {alert.description}</span> : null}
                  {alert.since ? <span className="muted small"> ({formatTime(alert.since, lang)})</span> : null}
                </li>
              ))}
            </ul>
          )}
        </article>
        <article className="card wide">
          <h2>{t('dash.latency')}</h2>
          <BarChart
            rows={endpoints.map((e) => ({ label: endpointLabel(e), values: [e.p50_ms ?? 0, e.p95_ms ?? 0, e.p99_ms ?? 0] }))}
            series={['p50', 'p95', 'p99']}
            unit="ms"
          />
        </article>
        <article className="card">
          <h2>{t('dash.throughput')}</h2>
          <BarChart rows={endpoints.map((e) => ({ label: endpointLabel(e), values: [e.per_second ?? 0] }))} series={['req/s']} unit="req/s" />
        </article>
        <article className="card">
          <h2>{t('dash.errorRate')}</h2>
          <BarChart
            rows={endpoints.map((e) => ({
              label: endpointLabel(e),
              values: [Number(e.count ?? 0) ? (100 * Number(e.errors ?? 0)) / Number(e.count ?? 0) : 0],
            }))}
            series={['%']}
            unit="%"
          />
        </article>
        <article className="card wide">
          <h2>{t('dash.history')}</h2>
          <LineChart points={history} series={['req/s', 'errors %']} />
        </article>
        <article className="card">
          <h2>{t('dash.cache')}</h2>
          <BarChart rows={gaugeRows(gauges.filter(isCache))} series={['value']} unit="" />
        </article>
        <article className="card wide" data-testid="pool-recommendations">
          <h2>{t('dash.poolAdvice')}</h2>
          <PoolRecommendations recommendations={dashboard?.pool_recommendations} />
        </article>
        <article className="card">
          <h2>{t('dash.pool')}</h2>
          <BarChart rows={gaugeRows(gauges.filter(isPool))} series={['value']} unit="" />
        </article>
        <article className="card">
          <h2>{t('dash.embedding')}</h2>
          <BarChart rows={gaugeRows(gauges.filter(isEmbedding))} series={['value']} unit="" />
        </article>
        <article className="card">
          <h2>{t('dash.otherGauges')}</h2>
          <BarChart rows={gaugeRows(gauges.filter((g) => !isCache(g) && !isPool(g) && !isEmbedding(g)))} series={['value']} unit="" />
        </article>
        <article className="card wide" data-testid="histograms">
          <h2>{t('dash.histograms')}</h2>
          <HistogramCharts histograms={dashboard?.histograms} />
        </article>
      </div>
    </section>
  );
}
