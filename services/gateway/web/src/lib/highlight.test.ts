import { describe, expect, it } from 'vitest';
import { splitHighlighted } from './highlight';

describe('splitHighlighted', () => {
  it('splits marked and plain parts', () => {
    expect(splitHighlighted('giao thức <mark>TCP</mark> tin cậy')).toEqual([
      { text: 'giao thức ', mark: false },
      { text: 'TCP', mark: true },
      { text: ' tin cậy', mark: false },
    ]);
  });

  it('keeps every other tag as literal text', () => {
    const parts = splitHighlighted('<img src=x onerror=alert(1)><mark><script>x</script></mark>');
    expect(parts).toEqual([
      { text: '<img src=x onerror=alert(1)>', mark: false },
      { text: '<script>x</script>', mark: true },
    ]);
  });

  it('copes with an unclosed mark and empty input', () => {
    expect(splitHighlighted('a <mark>b')).toEqual([
      { text: 'a ', mark: false },
      { text: 'b', mark: true },
    ]);
    expect(splitHighlighted('')).toEqual([]);
  });
});
