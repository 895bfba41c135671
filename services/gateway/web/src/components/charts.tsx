import { useI18n } from '../i18n';
import { formatNumber } from '../lib/dashboard';

// Charts drawn as plain SVG (no chart library: the dashboard chunk stays small). Each is an image
// with a text summary (role="img" + aria-label) and, for bars, the figures as a table to open.
const SERIES_COLOURS = ['var(--chart-1)', 'var(--chart-2)', 'var(--chart-3)'];
// Characters of a row label per line, and lines at most; the whole label is in the table and tooltip.
const LABEL_LINE_CHARS = 30;
const LABEL_LINES = 2;

export interface Row {
  label: string;
  values: number[];
  /** The row's own unit where rows of one chart differ (MiB beside %); else the chart's. */
  unit?: string;
}

const withUnit = (text: string, unit: string) => (unit ? (unit === '%' ? `${text} %` : `${text} ${unit}`) : text);

/** A label as at most two lines, broken between words, the rest elided. */
export function labelLines(label: string, width = LABEL_LINE_CHARS, lines = LABEL_LINES): string[] {
  const out: string[] = [];
  let current = '';
  for (const raw of label.split(/\s+/).filter(Boolean)) {
    const word = raw.length > width ? `${raw.slice(0, width - 1)}…` : raw;
    const next = current ? `${current} ${word}` : word;
    if (next.length <= width) {
      current = next;
      continue;
    }
    out.push(current);
    current = word;
    if (out.length === lines) {
      // Words left over: the last line says so.
      const last = out[lines - 1];
      out[lines - 1] = last.length >= width ? `${last.slice(0, width - 1)}…` : `${last}…`;
      return out;
    }
  }
  if (current) out.push(current);
  return out;
}

/** Horizontal bars, one group per row, drawn as plain SVG. */
export function BarChart({ rows, series, unit, title }: { rows: Row[]; series: string[]; unit: string; title: string }) {
  const { t, lang } = useI18n();
  if (rows.length === 0) return <p className="muted">{t('dash.noData')}</p>;
  const unitOf = (row: Row) => row.unit ?? unit;
  // Bars compare within one unit: MiB and % in one chart each fill their own scale.
  const maxByUnit = new Map<string, number>();
  for (const row of rows) maxByUnit.set(unitOf(row), Math.max(maxByUnit.get(unitOf(row)) ?? 1e-9, ...row.values));
  const labelWidth = 240;
  const barHeight = 10;
  const groupHeight = Math.max(series.length * barHeight, LABEL_LINES * 14) + 12;
  const width = 640;
  const height = rows.length * groupHeight + 8;
  const top = rows.reduce((best, row) => (row.values[row.values.length - 1] > best.values[best.values.length - 1] ? row : best), rows[0]);
  const summary = t('dash.chartSummary', {
    title,
    count: rows.length,
    label: top.label,
    value: withUnit(formatNumber(top.values[top.values.length - 1], lang), unitOf(top)),
  });
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label={summary} width="100%">
        {rows.map((row, r) => {
          const lines = labelLines(row.label);
          const max = maxByUnit.get(unitOf(row)) ?? 1;
          return (
            <g key={`${r}:${row.label}`} transform={`translate(0, ${r * groupHeight})`}>
              <text x={0} y={groupHeight / 2 - ((lines.length - 1) * 14) / 2} className="chart-label" dominantBaseline="middle">
                {lines.map((line, i) => (
                  <tspan key={i} x={0} dy={i === 0 ? 0 : 14}>
                    {line}
                  </tspan>
                ))}
                <title>{row.label}</title>
              </text>
              {row.values.map((value, s) => {
                const w = ((width - labelWidth - 90) * value) / max;
                const y = (groupHeight - series.length * barHeight) / 2 + s * barHeight;
                return (
                  <g key={s}>
                    <rect x={labelWidth} y={y} width={Math.max(1, w)} height={barHeight - 2} fill={SERIES_COLOURS[s % 3]}>
                      <title>{`${series[s]}: ${withUnit(formatNumber(value, lang), unitOf(row))}`}</title>
                    </rect>
                    <text x={labelWidth + Math.max(1, w) + 4} y={y + barHeight / 2} className="chart-value" dominantBaseline="middle">
                      {withUnit(formatNumber(value, lang), unitOf(row))}
                    </text>
                  </g>
                );
              })}
            </g>
          );
        })}
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
      <details className="chart-table" data-testid="chart-table">
        <summary>{t('dash.table')}</summary>
        <table>
          <caption className="visually-hidden">{title}</caption>
          <thead>
            <tr>
              <th scope="col">{t('dash.col.name')}</th>
              {series.map((name) => (
                <th scope="col" key={name}>
                  {name}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {rows.map((row, r) => (
              <tr key={`${r}:${row.label}`}>
                <th scope="row">{row.label}</th>
                {row.values.map((value, s) => (
                  <td key={s}>{withUnit(formatNumber(value, lang), unitOf(row))}</td>
                ))}
              </tr>
            ))}
          </tbody>
        </table>
      </details>
    </figure>
  );
}

/** A line per series over the window's time slots, oldest to newest. */
export function LineChart({ points, series, units, title }: { points: number[][]; series: string[]; units: string[]; title: string }) {
  const { t, lang } = useI18n();
  if (points.length < 2) return <p className="muted">{t('dash.noData')}</p>;
  const width = 640;
  const height = 160;
  const figures = series.map((name, s) => {
    const values = points.map((p) => p[s] ?? 0);
    return { name, values, last: values[values.length - 1], max: Math.max(...values), unit: units[s] ?? '' };
  });
  const summary = t('dash.lineSummary', {
    title,
    count: points.length,
    series: figures
      .map((f) => t('dash.lineSeries', { name: f.name, last: withUnit(formatNumber(f.last, lang), f.unit), max: withUnit(formatNumber(f.max, lang), f.unit) }))
      .join('; '),
  });
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${width} ${height + 10}`} role="img" aria-label={summary} width="100%">
        <line x1={0} y1={height} x2={width} y2={height} className="chart-axis" />
        {figures.map((figure, s) => {
          const max = Math.max(1e-9, figure.max);
          const path = figure.values
            .map((v, i) => `${i === 0 ? 'M' : 'L'}${((i / (points.length - 1)) * width).toFixed(1)},${(height - (v / max) * (height - 10)).toFixed(1)}`)
            .join(' ');
          return <path key={figure.name} d={path} fill="none" stroke={SERIES_COLOURS[s % 3]} strokeWidth={2} />;
        })}
      </svg>
      <figcaption className="legend">
        {figures.map((figure, s) => (
          <span key={figure.name}>
            <i style={{ background: SERIES_COLOURS[s % 3] }} /> {figure.name}: {withUnit(formatNumber(figure.last, lang), figure.unit)}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}
