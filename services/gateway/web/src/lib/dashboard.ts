// What the dashboard draws, computed from the metrics service's JSON (proto3 JSON: int64 as
// strings, defaults omitted), kept apart from the SVG so it can be tested on its own.
import type { HistogramStats, PoolRecommendation } from '../api/types';

export type PoolAdvice = 'increase' | 'decrease' | 'maintain' | 'unknown';

export interface PoolView {
  key: string;
  service: string;
  pool: string;
  advice: PoolAdvice;
  currentMax: number;
  recommendedMax: number;
  meanInUse: number;
  peakInUse: number;
  /** 0..100 */
  meanUtilisationPct: number;
  peakUtilisationPct: number;
  peakWaiting: number;
  reason: string;
}

const ADVICE: Record<string, PoolAdvice> = {
  POOL_ACTION_INCREASE: 'increase',
  POOL_ACTION_DECREASE: 'decrease',
  POOL_ACTION_MAINTAIN: 'maintain',
};
// What needs attention first.
const ADVICE_ORDER: PoolAdvice[] = ['increase', 'decrease', 'maintain', 'unknown'];

const num = (value: string | number | undefined): number => {
  const n = Number(value ?? 0);
  return Number.isFinite(n) ? n : 0;
};

const pct = (fraction: number | undefined): number => Math.round(Math.max(0, num(fraction)) * 1000) / 10;

export function poolViews(recommendations: readonly PoolRecommendation[] | undefined): PoolView[] {
  return (recommendations ?? [])
    .map((r) => {
      const service = r.service ?? '';
      const pool = r.pool ?? '';
      return {
        key: `${service}/${pool}`,
        service,
        pool,
        advice: ADVICE[r.action ?? ''] ?? 'unknown',
        currentMax: num(r.current_max),
        recommendedMax: num(r.recommended_max),
        meanInUse: num(r.mean_in_use),
        peakInUse: num(r.peak_in_use),
        meanUtilisationPct: pct(r.mean_utilisation),
        peakUtilisationPct: pct(r.peak_utilisation),
        peakWaiting: num(r.peak_waiting),
        reason: r.reason ?? '',
      };
    })
    .sort((a, b) => ADVICE_ORDER.indexOf(a.advice) - ADVICE_ORDER.indexOf(b.advice) || a.key.localeCompare(b.key));
}

export interface HistogramRow {
  label: string;
  count: number;
  /** p50, p95, p99 */
  values: [number, number, number];
}

export interface HistogramGroup {
  name: string;
  unit: string;
  rows: HistogramRow[];
}

function attributesText(attributes: Record<string, string> | undefined): string {
  return Object.entries(attributes ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
}

/** One chart per histogram (name and unit), its series busiest first, empty ones left out. */
export function histogramGroups(
  histograms: readonly HistogramStats[] | undefined,
  maxGroups = 8,
  maxRows = 10,
): HistogramGroup[] {
  const groups = new Map<string, HistogramGroup & { total: number }>();
  for (const h of histograms ?? []) {
    const count = num(h.count);
    if (count <= 0) continue;
    const name = h.name ?? '';
    const unit = h.unit ?? '';
    const id = `${name}\u0000${unit}`;
    let group = groups.get(id);
    if (!group) {
      group = { name, unit, rows: [], total: 0 };
      groups.set(id, group);
    }
    const attributes = attributesText(h.attributes);
    const label = [h.service, attributes && `{${attributes}}`].filter(Boolean).join(' ') || name;
    group.rows.push({ label, count, values: [num(h.p50), num(h.p95), num(h.p99)] });
    group.total += count;
  }
  return [...groups.values()]
    .sort((a, b) => b.total - a.total || a.name.localeCompare(b.name))
    .slice(0, maxGroups)
    .map(({ name, unit, rows }) => ({ name, unit, rows: rows.sort((a, b) => b.count - a.count).slice(0, maxRows) }));
}

/** OpenTelemetry unit strings as people read them ("{texts}" -> "texts", "1" -> ""). */
export function displayUnit(unit: string): string {
  if (unit === '1') return '';
  return unit.replace(/\{([^}]*)\}/g, '$1');
}

type Translate = (key: string, vars?: Record<string, string | number>) => string;

/** A metric's name as people read it: the dictionary's (dash.metric.<name>), else its words. */
export function metricLabel(name: string, t: Translate): string {
  const key = `dash.metric.${name}`;
  const known = t(key);
  if (known !== key) return known;
  return name.replace(/[._]+/g, ' ').trim();
}

/** A value in the unit people read: bytes as MiB, seconds as ms, ratios as %. */
export interface Shown {
  value: number;
  unit: string;
}

export function showValue(value: number | undefined, unit: string | undefined, name = ''): Shown {
  const v = Number.isFinite(Number(value)) ? Number(value) : 0;
  const u = unit ?? '';
  if (u === 'By') return { value: v / (1024 * 1024), unit: 'MiB' };
  if (u === 's') return { value: v * 1000, unit: 'ms' };
  if (u === 'us') return { value: v / 1000, unit: 'ms' };
  if (u === '1' || name.endsWith('hit_ratio') || name.endsWith('utilisation')) return { value: v * 100, unit: '%' };
  return { value: v, unit: displayUnit(u) };
}

/** A number short enough for a bar's end: 3 significant figures, no trailing zeros. */
export function formatNumber(value: number, lang = 'vi'): string {
  const digits = Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2;
  return value.toLocaleString(lang === 'vi' ? 'vi-VN' : 'en-GB', { maximumFractionDigits: digits });
}

export function formatShown(shown: Shown, lang = 'vi'): string {
  const number = formatNumber(shown.value, lang);
  if (!shown.unit) return number;
  return shown.unit === '%' ? `${number} %` : `${number} ${shown.unit}`;
}

// Attributes that say nothing to a reader of the chart (one instance among replicas is its service).
const HIDDEN_ATTRIBUTES = new Set(['service.instance.id', 'db.client.connection.state']);

/** A gauge's row label: readable metric name, the service, and the attributes that tell rows apart. */
export function gaugeRowLabel(
  gauge: { name?: string; service?: string; attributes?: Record<string, string> },
  t: Translate,
): string {
  const attributes = Object.entries(gauge.attributes ?? {})
    .filter(([k]) => !HIDDEN_ATTRIBUTES.has(k))
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k.split('.').pop()}: ${v}`);
  return [metricLabel(gauge.name ?? '', t), gauge.service, ...attributes].filter(Boolean).join(' · ');
}

/** The window's timeline as chart points: requests per second and % of calls that failed. */
export function timelinePoints(
  timeline: readonly { count?: string | number; errors?: string | number; per_second?: number }[] | undefined,
): number[][] {
  return (timeline ?? []).map((p) => {
    const count = num(p.count);
    return [num(p.per_second), count ? (100 * num(p.errors)) / count : 0];
  });
}

export interface AlertView {
  code: string;
  firing: boolean;
  title: string;
  value: string;
  threshold: string;
  detail: string;
}

const ALERT_UNITS: Record<string, (v: number) => Shown> = {
  pool_utilisation: (v) => ({ value: v * 100, unit: '%' }),
  response_time_p95: (v) => ({ value: v * 1000, unit: 'ms' }),
  error_rate: (v) => ({ value: v * 100, unit: '%' }),
};

/** An alert in the reader's language from its code and figures; an unknown rule keeps its own words. */
export function alertView(
  alert: { name?: string; code?: string; state?: string; value?: number; threshold?: number; description?: string; args?: Record<string, string> },
  t: Translate,
  lang = 'vi',
): AlertView {
  const code = alert.code || alert.name || '';
  const unit = ALERT_UNITS[code] ?? ((v: number) => ({ value: v, unit: '' }));
  const titleKey = `dash.alert.${code}`;
  const known = t(titleKey) !== titleKey;
  const args = alert.args ?? {};
  const detail = known
    ? Object.keys(args).length
      ? t(`dash.alert.${code}.detail`, args)
      : t('dash.alert.noFigures')
    : (alert.description ?? '');
  return {
    code,
    firing: alert.state === 'ALERT_STATE_FIRING',
    title: known ? t(titleKey) : code,
    value: formatShown(unit(alert.value ?? 0), lang),
    threshold: formatShown(unit(alert.threshold ?? 0), lang),
    detail,
  };
}
