import type { HistogramStats, PoolRecommendation } from '../api/types';
import { useI18n } from '../i18n';
import { histogramGroups, metricLabel, poolViews, showValue, type PoolView } from '../lib/dashboard';
import { BarChart } from './charts';

const fmt = (value: number) => (Number.isInteger(value) ? String(value) : value.toFixed(1));

/** One pool's use drawn against its size: mean in use (bar), peak (line), recommended size (dashed). */
function PoolGauge({ view }: { view: PoolView }) {
  const { t } = useI18n();
  const width = 640;
  const height = 26;
  const scale = Math.max(1, view.currentMax, view.recommendedMax, view.peakInUse);
  const x = (value: number) => (Math.min(value, scale) / scale) * width;
  return (
    <svg viewBox={`0 0 ${width} ${height}`} width="100%" role="img" aria-label={t('dash.poolGauge', { pool: view.key })}>
      <rect x={0} y={6} width={x(view.currentMax)} height={14} className="pool-track" />
      <rect x={0} y={6} width={Math.max(1, x(view.meanInUse))} height={14} fill="var(--chart-1)">
        <title>{`${t('dash.poolMean')}: ${fmt(view.meanInUse)}`}</title>
      </rect>
      <line x1={x(view.peakInUse)} x2={x(view.peakInUse)} y1={2} y2={24} stroke="var(--chart-2)" strokeWidth={3}>
        <title>{`${t('dash.poolPeak')}: ${fmt(view.peakInUse)}`}</title>
      </line>
      {view.recommendedMax > 0 && view.recommendedMax !== view.currentMax && (
        <line
          x1={x(view.recommendedMax) - 1}
          x2={x(view.recommendedMax) - 1}
          y1={0}
          y2={26}
          stroke="var(--chart-3)"
          strokeWidth={2}
          strokeDasharray="4 3"
        >
          <title>{`${t('dash.poolRecommended')}: ${view.recommendedMax}`}</title>
        </line>
      )}
    </svg>
  );
}

/** The metrics service's pool-size advice (increase / decrease / maintain) with the numbers behind it. */
export function PoolRecommendations({ recommendations }: { recommendations: PoolRecommendation[] | undefined }) {
  const { t } = useI18n();
  const views = poolViews(recommendations);
  if (views.length === 0) return <p className="muted">{t('dash.noData')}</p>;
  return (
    <ul className="pool-list">
      {views.map((view) => (
        <li key={view.key} className={`pool pool-${view.advice}`} data-testid="pool-recommendation" data-action={view.advice}>
          <div className="pool-head">
            <strong>{view.key}</strong>
            <span className="pool-advice">
              {t(`dash.pool.${view.advice}`)}
              {view.advice !== 'maintain' && view.advice !== 'unknown' && view.recommendedMax > 0
                ? `: ${view.currentMax} → ${view.recommendedMax}`
                : view.currentMax > 0
                  ? ` (${t('dash.poolMax')} ${view.currentMax})`
                  : ''}
            </span>
          </div>
          <PoolGauge view={view} />
          <p className="muted small">
            {t('dash.poolFigures', {
              mean: fmt(view.meanInUse),
              meanPct: fmt(view.meanUtilisationPct),
              peak: fmt(view.peakInUse),
              peakPct: fmt(view.peakUtilisationPct),
              waiting: fmt(view.peakWaiting),
            })}
          </p>
          {view.reason && <p className="small pool-reason">{view.reason}</p>}
        </li>
      ))}
    </ul>
  );
}

/** Every other histogram (DB query time, embedding batch size, LLM time to first token, ...): p50/p95/p99. */
export function HistogramCharts({ histograms }: { histograms: HistogramStats[] | undefined }) {
  const { t } = useI18n();
  const groups = histogramGroups(histograms);
  if (groups.length === 0) return <p className="muted">{t('dash.noData')}</p>;
  return (
    <div className="histograms">
      {groups.map((group) => {
        // Seconds drawn as ms, bytes as MiB: the unit people read.
        const unit = showValue(1, group.unit, group.name).unit;
        const scale = showValue(1, group.unit, group.name).value;
        const title = metricLabel(group.name, t);
        const rows = group.rows.map((row) => ({ label: row.label, values: row.values.map((v) => v * scale) }));
        return (
          <section key={`${group.name}/${group.unit}`} data-testid="histogram">
            <h3 className="small">
              {title}
              {unit ? <span className="muted"> ({unit})</span> : null}
            </h3>
            <BarChart rows={rows} series={['p50', 'p95', 'p99']} unit={unit} title={title} />
          </section>
        );
      })}
    </div>
  );
}
