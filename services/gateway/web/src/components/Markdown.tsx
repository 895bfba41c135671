import { memo, useEffect, useMemo, useState, type ReactNode } from 'react';
import ReactMarkdown, { defaultUrlTransform, type Components } from 'react-markdown';
import remarkGfm from 'remark-gfm';
import type { PluggableList } from './markdownPlugins';
import { citationIndexFromHref, linkCitations } from '../lib/citations';
import { featuresOf, loadFeature, loadedFeature } from './markdownPlugins';

interface HtmlNode {
  type: string;
  value?: string;
  children?: HtmlNode[];
}

/**
 * Raw HTML in Markdown becomes literal text: "<script>" is shown, never parsed.
 * (react-markdown without rehype-raw would already not execute it; this makes it visible too.)
 */
function remarkHtmlAsText() {
  const visit = (node: HtmlNode) => {
    if (node.type === 'html') node.type = 'text';
    node.children?.forEach(visit);
  };
  return (tree: HtmlNode) => visit(tree);
}

/** Only web and mail links survive; javascript:, data:, vbscript: and the rest become empty. */
export function safeUrl(url: string): string {
  const cleaned = defaultUrlTransform(url.trim());
  if (!cleaned) return '';
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(cleaned);
  return !scheme || ['http', 'https', 'mailto'].includes(scheme[1].toLowerCase()) ? cleaned : '';
}

export interface MarkdownProps {
  text: string;
  citationNumbers?: ReadonlySet<number>;
  renderCitation?: (index: number) => ReactNode;
}

function MarkdownView({ text, citationNumbers, renderCitation }: MarkdownProps) {
  const features = useMemo(() => featuresOf(text), [text]);
  const [, setLoadedCount] = useState(0);
  useEffect(() => {
    let live = true;
    for (const feature of features) {
      if (!loadedFeature(feature)) {
        loadFeature(feature)
          .then(() => live && setLoadedCount((n) => n + 1))
          .catch(() => undefined); // offline chunk: the text still shows, unhighlighted
      }
    }
    return () => {
      live = false;
    };
  }, [features]);

  const remarkPlugins: PluggableList = [remarkGfm, remarkHtmlAsText];
  const rehypePlugins: PluggableList = [];
  for (const feature of features) {
    const plugins = loadedFeature(feature);
    if (plugins) {
      remarkPlugins.push(...plugins.remark);
      rehypePlugins.push(...plugins.rehype);
    }
  }

  const source = citationNumbers && citationNumbers.size > 0 ? linkCitations(text, citationNumbers) : text;

  const components: Components = {
    a({ href, children }) {
      const index = citationIndexFromHref(href);
      if (index !== null && renderCitation) return <>{renderCitation(index)}</>;
      if (!href) return <span>{children}</span>;
      return (
        <a href={href} target="_blank" rel="noopener noreferrer nofollow">
          {children}
        </a>
      );
    },
    // Images are never fetched: a document could point at any server (tracking, exfiltration).
    img({ alt, src }) {
      return (
        <span className="md-image" title={src ?? ''}>
          [{alt || 'image'}]
        </span>
      );
    },
  };

  return (
    <div className="markdown">
      <ReactMarkdown
        remarkPlugins={remarkPlugins}
        rehypePlugins={rehypePlugins}
        components={components}
        urlTransform={safeUrl}
        skipHtml={false}
      >
        {source}
      </ReactMarkdown>
    </div>
  );
}

export const Markdown = memo(MarkdownView);
