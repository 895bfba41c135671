import type { Options } from 'react-markdown';

export type PluggableList = NonNullable<Options['remarkPlugins']>;

// Heavy renderers, each a separate chunk fetched the first time an answer needs it.
export interface LoadedPlugins {
  remark: PluggableList;
  rehype: PluggableList;
}

export type Feature = 'math' | 'code';

const MATH = /\$\$|\\\(|\\\[|(^|[^\\$])\$[^\s$](?:[^$\n]*[^\s$])?\$/;
const CODE_FENCE = /(^|\n)\s*(```|~~~)/;

/** Which heavy features a text needs. */
export function featuresOf(text: string): Feature[] {
  const features: Feature[] = [];
  if (MATH.test(text)) features.push('math');
  if (CODE_FENCE.test(text)) features.push('code');
  return features;
}

// One import() per function: each gets its own CSS preload list from the bundler.
const importers: Record<Feature, () => Promise<{ plugins: LoadedPlugins }>> = {
  math: () => import('./mathPlugins'),
  code: () => import('./codePlugins'),
};

const loaded = new Map<Feature, LoadedPlugins>();
const loading = new Map<Feature, Promise<LoadedPlugins>>();

export function loadedFeature(feature: Feature): LoadedPlugins | undefined {
  return loaded.get(feature);
}

export function loadFeature(feature: Feature): Promise<LoadedPlugins> {
  let promise = loading.get(feature);
  if (!promise) {
    promise = importers[feature]().then((module) => {
      const plugins = module.plugins;
      loaded.set(feature, plugins);
      return plugins;
    });
    loading.set(feature, promise);
    promise.catch(() => loading.delete(feature));
  }
  return promise;
}
