import { useCallback, useEffect, useState } from 'react';
import { ApiError } from '../api/errors';
import type { Alert, Dashboard, EndpointStats, GaugeValue } from '../api/types';
import { BarChart, LineChart } from '../components/charts';
import { HistogramCharts, PoolRecommendations } from '../components/DashboardPanels';
import { ErrorBanner } from '../components/ErrorBanner';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { alertView, gaugeRowLabel, showValue, timelinePoints } from '../lib/dashboard';
import { formatTime } from '../lib/format';

const REFRESH_MS = 5000;
// "chat ChatService/Ask" rather than the full gRPC name: the service says where, the method what.
const endpointLabel = (e: EndpointStats) => `${e.service ?? ''} · ${e.method ?? ''}`.replace(/^ · | · $/g, '').trim();

export default function DashboardPage() {
  const { client } = useApp();
  const { t, lang } = useI18n();
  const [windowSeconds, setWindowSeconds] = useState(300);
  const [dashboard, setDashboard] = useState<Dashboard | null>(null);
  const [alerts, setAlerts] = useState<Alert[]>([]);
  const [error, setError] = useState<unknown>(null);
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
  // The cache card shows hit ratios; the hits and misses behind them are counts, with the other figures.
  const isCache = (g: GaugeValue) => /hit_ratio$/.test(g.name ?? '');
  const isPool = (g: GaugeValue) => /pool/i.test(g.name ?? '');
  const isEmbedding = (g: GaugeValue) => /^embed/i.test(g.name ?? '') && !isCache(g);
  const isProcess = (g: GaugeValue) => /^process\./.test(g.name ?? '');
  const gaugeRows = (list: GaugeValue[]) =>
    list.map((g) => {
      const shown = showValue(g.value, g.unit, g.name);
      return { label: gaugeRowLabel(g, t), values: [shown.value], unit: shown.unit };
    });
  const timeline = timelinePoints(dashboard?.timeline);
  const seriesNames = [t('dash.seriesRate'), t('dash.seriesErrors')];

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
        <article className="card" data-testid="alerts">
          <h2>{t('dash.alerts')}</h2>
          {alerts.length === 0 ? (
            <p className="muted">{t('dash.noData')}</p>
          ) : (
            <ul className="alerts">
              {alerts.map((alert) => {
                const view = alertView(alert, t, lang);
                return (
                  <li key={view.code} className={view.firing ? 'firing' : 'ok'} data-testid="alert" data-code={view.code}>
                    <strong>{view.firing ? t('dash.firing') : t('dash.ok')}</strong> {view.title}:{' '}
                    {t('dash.alert.value', { value: view.value, threshold: view.threshold })}
                    {view.detail ? <span className="muted"> — {view.detail}</span> : null}
                    {alert.since ? <span className="muted small"> ({t('dash.alert.since', { time: formatTime(alert.since, lang) })})</span> : null}
                  </li>
                );
              })}
            </ul>
          )}
        </article>
        <article className="card wide">
          <h2>{t('dash.latency')}</h2>
          <BarChart
            rows={endpoints.map((e) => ({ label: endpointLabel(e), values: [e.p50_ms ?? 0, e.p95_ms ?? 0, e.p99_ms ?? 0] }))}
            series={['p50', 'p95', 'p99']}
            unit="ms"
            title={t('dash.latency')}
          />
        </article>
        <article className="card">
          <h2>{t('dash.throughput')}</h2>
          <BarChart
            rows={endpoints.map((e) => ({ label: endpointLabel(e), values: [e.per_second ?? 0] }))}
            series={[t('dash.seriesRate')]}
            unit={t('dash.unitRate')}
            title={t('dash.throughput')}
          />
        </article>
        <article className="card">
          <h2>{t('dash.errorRate')}</h2>
          <BarChart
            rows={endpoints.map((e) => ({
              label: endpointLabel(e),
              values: [Number(e.count ?? 0) ? (100 * Number(e.errors ?? 0)) / Number(e.count ?? 0) : 0],
            }))}
            series={[t('dash.seriesErrors')]}
            unit="%"
            title={t('dash.errorRate')}
          />
        </article>
        <article className="card wide" data-testid="timeline">
          <h2>{t('dash.history')}</h2>
          <LineChart points={timeline} series={seriesNames} units={[t('dash.unitRate'), '%']} title={t('dash.history')} />
        </article>
        <article className="card">
          <h2>{t('dash.cache')}</h2>
          <BarChart rows={gaugeRows(gauges.filter(isCache))} series={[t('dash.seriesValue')]} unit="%" title={t('dash.cache')} />
        </article>
        <article className="card wide" data-testid="pool-recommendations">
          <h2>{t('dash.poolAdvice')}</h2>
          <PoolRecommendations recommendations={dashboard?.pool_recommendations} />
        </article>
        <article className="card">
          <h2>{t('dash.pool')}</h2>
          <BarChart rows={gaugeRows(gauges.filter(isPool))} series={[t('dash.seriesValue')]} unit="" title={t('dash.pool')} />
        </article>
        <article className="card" data-testid="process-gauges">
          <h2>{t('dash.process')}</h2>
          <BarChart rows={gaugeRows(gauges.filter(isProcess))} series={[t('dash.seriesValue')]} unit="" title={t('dash.process')} />
        </article>
        <article className="card">
          <h2>{t('dash.embedding')}</h2>
          <BarChart rows={gaugeRows(gauges.filter(isEmbedding))} series={[t('dash.seriesValue')]} unit="" title={t('dash.embedding')} />
        </article>
        <article className="card">
          <h2>{t('dash.otherGauges')}</h2>
          <BarChart
            rows={gaugeRows(gauges.filter((g) => !isCache(g) && !isPool(g) && !isEmbedding(g) && !isProcess(g)))}
            series={[t('dash.seriesValue')]}
            unit=""
            title={t('dash.otherGauges')}
          />
        </article>
        <article className="card wide" data-testid="histograms">
          <h2>{t('dash.histograms')}</h2>
          <HistogramCharts histograms={dashboard?.histograms} />
        </article>
      </div>
    </section>
  );
}
