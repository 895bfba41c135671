import { useCallback, useEffect, useState } from 'react';
import { ApiError } from '../api/errors';
import type { Alert, Dashboard, EndpointStats, GaugeValue } from '../api/types';
import { ErrorBanner } from '../components/ErrorBanner';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { formatTime } from '../lib/format';

const REFRESH_MS = 5000;
const HISTORY_POINTS = 60;
const SERIES_COLOURS = ['var(--chart-1)', 'var(--chart-2)', 'var(--chart-3)'];

interface Row {
  label: string;
  values: number[];
}

/** Horizontal bars, one group per row, drawn as plain SVG. */
function BarChart({ rows, series, unit }: { rows: Row[]; series: string[]; unit: string }) {
  const { t } = useI18n();
  if (rows.length === 0) return <p className="muted">{t('dash.noData')}</p>;
  const max = Math.max(1e-9, ...rows.flatMap((r) => r.values));
  const labelWidth = 220;
  const barHeight = 10;
  const groupHeight = series.length * barHeight + 10;
  const width = 640;
  const height = rows.length * groupHeight + 24;
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${width} ${height}`} role="img" width="100%">
        {rows.map((row, r) => (
          <g key={row.label} transform={`translate(0, ${r * groupHeight})`}>
            <text x={0} y={groupHeight / 2} className="chart-label" dominantBaseline="middle">
              {row.label.length > 34 ? `${row.label.slice(0, 33)}…` : row.label}
              <title>{row.label}</title>
            </text>
            {row.values.map((value, s) => {
              const w = ((width - labelWidth - 70) * value) / max;
              return (
                <g key={s}>
                  <rect x={labelWidth} y={4 + s * barHeight} width={Math.max(1, w)} height={barHeight - 2} fill={SERIES_COLOURS[s % 3]}>
                    <title>{`${series[s]}: ${value.toFixed(2)} ${unit}`}</title>
                  </rect>
                  <text x={labelWidth + Math.max(1, w) + 4} y={4 + s * barHeight + barHeight / 2} className="chart-value" dominantBaseline="middle">
                    {value < 10 ? value.toFixed(2) : Math.round(value)}
                  </text>
                </g>
              );
            })}
          </g>
        ))}
      </svg>
      {series.length > 1 && (
        <figcaption className="legend">
          {series.map((name, s) => (
            <span key={name}>
              <i style={{ background: SERIES_COLOURS[s % 3] }} /> {name}
            </span>
          ))}
        </figcaption>
      )}
    </figure>
  );
}

/** A line per series over the samples taken while the page is open. */
function LineChart({ points, series }: { points: number[][]; series: string[] }) {
  const { t } = useI18n();
  if (points.length < 2) return <p className="muted">{t('dash.noData')}</p>;
  const width = 640;
  const height = 160;
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${width} ${height + 10}`} role="img" width="100%">
        <line x1={0} y1={height} x2={width} y2={height} className="chart-axis" />
        {series.map((name, s) => {
          const values = points.map((p) => p[s]);
          const max = Math.max(1e-9, ...values);
          const path = values
            .map((v, i) => `${i === 0 ? 'M' : 'L'}${((i / (HISTORY_POINTS - 1)) * width).toFixed(1)},${(height - (v / max) * (height - 10)).toFixed(1)}`)
            .join(' ');
          return <path key={name} d={path} fill="none" stroke={SERIES_COLOURS[s % 3]} strokeWidth={2} />;
        })}
      </svg>
      <figcaption className="legend">
        {series.map((name, s) => (
          <span key={name}>
            <i style={{ background: SERIES_COLOURS[s % 3] }} /> {name}: {points[points.length - 1][s].toFixed(2)}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}

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
    void load();
    const timer = window.setInterval(() => void load(), REFRESH_MS);
    return () => window.clearInterval(timer);
  }, [load]);

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
      {error instanceof ApiError && [404, 502, 503, 504].includes(error.status) ? (
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
      </div>
    </section>
  );
}
