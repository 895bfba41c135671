import { describe, expect, it } from 'vitest';
import { displayUnit, histogramGroups, poolViews } from './dashboard';

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
