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

const loaded = new Map<Feature, LoadedPlugins>();
const loading = new Map<Feature, Promise<LoadedPlugins>>();

export function loadedFeature(feature: Feature): LoadedPlugins | undefined {
  return loaded.get(feature);
}

export function loadFeature(feature: Feature): Promise<LoadedPlugins> {
  let promise = loading.get(feature);
  if (!promise) {
    promise = (feature === 'math' ? import('./mathPlugins') : import('./codePlugins')).then((module) => {
      const plugins = module.plugins;
      loaded.set(feature, plugins);
      return plugins;
    });
    loading.set(feature, promise);
    promise.catch(() => loading.delete(feature));
  }
  return promise;
}
