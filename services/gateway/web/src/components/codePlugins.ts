import rehypeHighlight from 'rehype-highlight';
import './highlight.css';
import type { LoadedPlugins } from './markdownPlugins';

// Only fenced blocks that name a language are highlighted: guessing costs time on long answers.
export const plugins: LoadedPlugins = {
  remark: [],
  rehype: [[rehypeHighlight, { detect: false, ignoreMissing: true }]],
};
