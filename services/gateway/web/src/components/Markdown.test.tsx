import { renderToStaticMarkup } from 'react-dom/server';
import { describe, expect, it } from 'vitest';
import { Markdown, safeUrl } from './Markdown';
import { featuresOf } from './markdownPlugins';

const render = (text: string, numbers?: Set<number>) =>
  renderToStaticMarkup(
    <Markdown text={text} citationNumbers={numbers} renderCitation={(n) => <button data-cite={n}>{n}</button>} />,
  );

describe('Markdown', () => {
  it('renders Markdown structure', () => {
    const html = render('# Title\n\n**bold** and `code`\n\n- a\n- b');
    expect(html).toContain('<h1>Title</h1>');
    expect(html).toContain('<strong>bold</strong>');
    expect(html).toContain('<li>a</li>');
  });

  it('shows raw HTML as literal text, never as elements', () => {
    const html = render('<script>alert(1)</script>\n\nhi <img src=x onerror="alert(2)"> <svg onload="alert(3)"><circle/></svg>');
    expect(html).not.toMatch(/<script|<img|<svg|<circle/i);
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(html).toContain('&lt;img src=x onerror=&quot;alert(2)&quot;&gt;');
  });

  it('drops javascript:, data: and vbscript: link targets but keeps web links', () => {
    const html = render('[a](javascript:alert(1)) [b](JaVaScRiPt:alert(1)) [c](data:text/html,<b>x</b>) [d](vbscript:x) [e](https://ptit.edu.vn)');
    expect(html).not.toMatch(/javascript:|data:|vbscript:/i);
    expect(html).toContain('href="https://ptit.edu.vn"');
    expect(html).toContain('rel="noopener noreferrer nofollow"');
  });

  it('never renders images, so no request leaves the origin', () => {
    const html = render('![logo](https://evil.example/track.png) ![svg](data:image/svg+xml,<svg onload=alert(1)>)');
    expect(html).not.toContain('<img');
    expect(html).toContain('[logo]');
  });

  it('turns known citation markers into chips, leaving unknown ones as text', () => {
    const html = render('TCP [1] and UDP [9].', new Set([1]));
    expect(html).toContain('<button data-cite="1">1</button>');
    expect(html).toContain('[9]');
  });

  it('asks for the heavy renderers only when the text needs them', () => {
    expect(featuresOf('plain answer costs $5 and $6')).toEqual([]);
    expect(featuresOf('Euler: $e^{i\\pi}+1=0$')).toEqual(['math']);
    expect(featuresOf('$$\\sum x$$')).toEqual(['math']);
    expect(featuresOf('```python\nprint(1)\n```')).toEqual(['code']);
  });
});

describe('safeUrl', () => {
  it('keeps http, https, mailto and relative links only', () => {
    expect(safeUrl('https://a.vn/x')).toBe('https://a.vn/x');
    expect(safeUrl('mailto:a@b.vn')).toBe('mailto:a@b.vn');
    expect(safeUrl('#cite-1')).toBe('#cite-1');
    expect(safeUrl(' javascript:alert(1)')).toBe('');
    expect(safeUrl('file:///etc/passwd')).toBe('');
  });
});
