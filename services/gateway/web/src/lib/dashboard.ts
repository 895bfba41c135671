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
  return unit.replace(/^\{(.*)\}$/, '$1');
}
