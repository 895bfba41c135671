import { describe, expect, it } from 'vitest';
import { translate } from '../i18n';
import { alertView, displayUnit, formatShown, gaugeRowLabel, histogramGroups, metricLabel, poolViews, showValue, timelinePoints } from './dashboard';

describe('pool recommendations', () => {
  it('reads proto3 JSON (int64 as strings, defaults omitted) and puts what needs action first', () => {
    const views = poolViews([
      { service: 'storage', pool: 'b', action: 'POOL_ACTION_MAINTAIN', current_max: '20', recommended_max: '20' },
      {
        service: 'storage',
        pool: 'a',
        action: 'POOL_ACTION_INCREASE',
        current_max: '20',
        recommended_max: '30',
        mean_in_use: 17.5,
        peak_in_use: 20,
        mean_utilisation: 0.875,
        peak_utilisation: 1,
        peak_waiting: 4,
        reason: 'peak use reached the pool size',
      },
      { service: 'chat', pool: 'x', action: 'POOL_ACTION_DECREASE', current_max: 50, recommended_max: '10' },
      { service: 'odd' },
    ]);
    expect(views.map((v) => [v.key, v.advice])).toEqual([
      ['storage/a', 'increase'],
      ['chat/x', 'decrease'],
      ['storage/b', 'maintain'],
      ['odd/', 'unknown'],
    ]);
    expect(views[0]).toMatchObject({
      currentMax: 20,
      recommendedMax: 30,
      meanInUse: 17.5,
      meanUtilisationPct: 87.5,
      peakUtilisationPct: 100,
      peakWaiting: 4,
      reason: 'peak use reached the pool size',
    });
    expect(views[3]).toMatchObject({ currentMax: 0, recommendedMax: 0, meanUtilisationPct: 0, reason: '' });
    expect(poolViews(undefined)).toEqual([]);
  });
});

describe('histograms', () => {
  it('groups by name and unit, busiest first, skipping empty series', () => {
    const groups = histogramGroups([
      { name: 'db.query.duration', unit: 'ms', service: 'storage', attributes: { op: 'select' }, count: '40', p50: 1, p95: 3, p99: 5 },
      { name: 'db.query.duration', unit: 'ms', service: 'storage', attributes: { op: 'insert' }, count: '60', p50: 2, p95: 4, p99: 8 },
      { name: 'embedding.batch.size', unit: '{texts}', service: 'embedding', count: '500', p50: 8, p95: 32, p99: 64 },
      { name: 'llm.ttft', unit: 's', service: 'chat', count: '0' },
    ]);
    expect(groups.map((g) => g.name)).toEqual(['embedding.batch.size', 'db.query.duration']);
    expect(groups[1].rows).toEqual([
      { label: 'storage {op=insert}', count: 60, values: [2, 4, 8] },
      { label: 'storage {op=select}', count: 40, values: [1, 3, 5] },
    ]);
    expect(histogramGroups(undefined)).toEqual([]);
  });

  it('limits how much it draws', () => {
    const many = Array.from({ length: 30 }, (_, i) => ({ name: `h${i % 12}`, service: `s${i}`, count: i + 1, p50: 1 }));
    const groups = histogramGroups(many, 4, 2);
    expect(groups).toHaveLength(4);
    expect(groups.every((g) => g.rows.length <= 2)).toBe(true);
  });

  it('shows units as people read them', () => {
    expect(displayUnit('{texts}')).toBe('texts');
    expect(displayUnit('1')).toBe('');
    expect(displayUnit('ms')).toBe('ms');
  });
});

describe('readable figures', () => {
  const t = (key: string, vars?: Record<string, string | number>) => translate('vi', key, vars);
  const en = (key: string, vars?: Record<string, string | number>) => translate('en', key, vars);

  it('names metrics in the UI language, an unknown one by its words', () => {
    expect(metricLabel('process.memory.rss', t)).toBe('Bộ nhớ (RSS)');
    expect(metricLabel('process.memory.rss', en)).toBe('Memory (RSS)');
    expect(metricLabel('storage.blob_writes.total', t)).toBe('storage blob writes total');
    expect(gaugeRowLabel({ name: 'db.pool.in_use', service: 'storage', attributes: { pool: 'main', 'service.instance.id': 'x1' } }, t)).toBe(
      'Kết nối đang dùng · storage · pool: main',
    );
  });

  it('shows bytes as MiB, seconds as ms and ratios as percentages', () => {
    expect(showValue(150 * 1024 * 1024, 'By')).toEqual({ value: 150, unit: 'MiB' });
    expect(showValue(0.25, 's')).toEqual({ value: 250, unit: 'ms' });
    expect(showValue(0.75, '1', 'chat.cache.hit_ratio')).toEqual({ value: 75, unit: '%' });
    expect(showValue(12, '{text}/s')).toEqual({ value: 12, unit: 'text/s' });
    expect(formatShown({ value: 150.4, unit: 'MiB' }, 'en')).toBe('150 MiB');
    expect(formatShown({ value: 1.5, unit: 'ms' }, 'vi')).toBe('1,5 ms');
  });

  it('turns the window timeline into rate and error points', () => {
    expect(timelinePoints([{ count: '10', errors: '0', per_second: 5 }, {}, { count: '4', errors: '1', per_second: 2 }])).toEqual([
      [5, 0],
      [0, 0],
      [2, 25],
    ]);
  });

  it('writes alerts from their code and figures, in vi and en', () => {
    const alert = {
      name: 'error_rate',
      code: 'error_rate',
      state: 'ALERT_STATE_FIRING' as const,
      value: 0.3,
      threshold: 0.05,
      description: 'calls the server failed; 30 of 100 calls failed',
      args: { errors: '30', calls: '100' },
    };
    expect(alertView(alert, t, 'vi')).toEqual({
      code: 'error_rate',
      firing: true,
      title: 'Tỉ lệ lỗi',
      value: '30 %',
      threshold: '5 %',
      detail: '30/100 lượt gọi lỗi phía máy chủ',
    });
    expect(alertView(alert, en, 'en').detail).toBe('30 of 100 calls failed on the server side');
    const p95 = alertView({ code: 'response_time_p95', value: 0.512, threshold: 0.5, args: {} }, en, 'en');
    expect([p95.title, p95.value, p95.threshold, p95.detail]).toEqual(['Response time p95', '512 ms', '500 ms', 'no data in the alert window yet']);
    // A rule this app does not know keeps the server's words.
    expect(alertView({ name: 'disk_full', description: 'disk 95 % full', value: 0.95 }, t).detail).toBe('disk 95 % full');
  });
});
