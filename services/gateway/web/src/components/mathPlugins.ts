import rehypeKatex from 'rehype-katex';
import remarkMath from 'remark-math';
import 'katex/dist/katex.min.css';
import type { LoadedPlugins } from './markdownPlugins';

// trust: false (KaTeX's default, said aloud): \href, \url, \htmlClass and friends stay disabled,
// so math from a document cannot make links or attributes.
export const plugins: LoadedPlugins = {
  remark: [remarkMath],
  rehype: [[rehypeKatex, { trust: false, strict: 'ignore', throwOnError: false, maxSize: 50, maxExpand: 200 }]],
};
