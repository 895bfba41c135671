import { useI18n } from '../i18n';

// Charts drawn as plain SVG (no chart library: the dashboard chunk stays small).
export const HISTORY_POINTS = 60;
const SERIES_COLOURS = ['var(--chart-1)', 'var(--chart-2)', 'var(--chart-3)'];

export interface Row {
  label: string;
  values: number[];
}

/** Horizontal bars, one group per row, drawn as plain SVG. */
export function BarChart({ rows, series, unit }: { rows: Row[]; series: string[]; unit: string }) {
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
          <g key={`${r}:${row.label}`} transform={`translate(0, ${r * groupHeight})`}>
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
export function LineChart({ points, series }: { points: number[][]; series: string[] }) {
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

