import { renderToStaticMarkup } from 'react-dom/server';
import { describe, expect, it } from 'vitest';
import { I18nProvider, translate } from '../i18n';
import { HistogramCharts, PoolRecommendations } from './DashboardPanels';

const inProvider = (node: React.ReactNode) => renderToStaticMarkup(<I18nProvider>{node}</I18nProvider>);

describe('PoolRecommendations', () => {
  it('draws each pool with its advice, the size change and the numbers behind it', () => {
    const html = inProvider(
      <PoolRecommendations
        recommendations={[
          { service: 'storage', pool: 'asyncpg', action: 'POOL_ACTION_MAINTAIN', current_max: '20', recommended_max: '20', mean_in_use: 3 },
          {
            service: 'storage',
            pool: 'main',
            action: 'POOL_ACTION_INCREASE',
            current_max: '20',
            recommended_max: '30',
            mean_in_use: 18,
            peak_in_use: 20,
            mean_utilisation: 0.9,
            peak_utilisation: 1,
            peak_waiting: 5,
            reason: 'callers waited for a connection',
          },
        ]}
      />,
    );
    // Increase first, with the change and the recommended size marked on the gauge.
    expect(html.indexOf('data-action="increase"')).toBeLessThan(html.indexOf('data-action="maintain"'));
    expect(html).toContain(`${translate('vi', 'dash.pool.increase')}: 20 → 30`);
    expect(html).toContain(`${translate('vi', 'dash.pool.maintain')} (${translate('vi', 'dash.poolMax')} 20)`);
    expect(html).toContain(translate('vi', 'dash.poolFigures', { mean: '18', meanPct: '90', peak: '20', peakPct: '100', waiting: '5' }));
    expect(html).toContain('callers waited for a connection');
    expect(html).toContain('stroke-dasharray="4 3"');
    expect(html.match(/stroke-dasharray/g)).toHaveLength(1); // none for "maintain"
  });

  it('says when there is nothing to advise', () => {
    expect(inProvider(<PoolRecommendations recommendations={undefined} />)).toContain(translate('vi', 'dash.noData'));
  });
});

describe('HistogramCharts', () => {
  it('draws one p50/p95/p99 chart per histogram, in its own unit', () => {
    const html = inProvider(
      <HistogramCharts
        histograms={[
          // Seconds, as the OpenTelemetry instrumentation reports them: drawn in ms.
          { name: 'db.client.operation.duration', unit: 's', service: 'storage', count: '12', p50: 0.0015, p95: 0.004, p99: 0.009 },
          { name: 'embedding.batch.size', unit: '{texts}', service: 'embedding', count: '3', p50: 8, p95: 16, p99: 16 },
          { name: 'some.new.histogram', unit: 'ms', service: 'chat', count: '1', p50: 1, p95: 1, p99: 1 },
        ]}
      />,
    );
    expect(html.match(/data-testid="histogram"/g)).toHaveLength(3);
    // Readable names in the UI's language (an unknown one as its words), each in its unit.
    expect(html).toContain('Thời gian truy vấn DB<span class="muted"> (ms)</span>');
    expect(html).toContain('Kích thước lô embedding<span class="muted"> (texts)</span>');
    expect(html).toContain('some new histogram<span class="muted"> (ms)</span>');
    expect(html).toContain('p95: 4 ms');
    // Each chart is an image with a text summary, and its figures are a table too.
    expect(html).toContain('aria-label="Thời gian truy vấn DB: cao nhất là storage (9 ms), tổng 1 mục."');
    expect(html).toContain('<th scope="row">storage</th><td>1,5 ms</td><td>4 ms</td><td>9 ms</td>');
  });
});
