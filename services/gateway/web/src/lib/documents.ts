// The documents page's view of a semester of files: search, filters and sort, apart from React so
// they can be tested on their own.
import type { StoredFile } from '../api/types';

export type SortKey = 'newest' | 'oldest' | 'name' | 'nameDesc' | 'largest' | 'smallest';
export const SORT_KEYS: SortKey[] = ['newest', 'oldest', 'name', 'nameDesc', 'largest', 'smallest'];

/** Status as a student groups it: queued and processing are both "still being read". */
export type StatusFilter = 'all' | 'ready' | 'processing' | 'failed';
export const STATUS_FILTERS: StatusFilter[] = ['all', 'ready', 'processing', 'failed'];

export type KindFilter = 'all' | 'pdf' | 'docx' | 'pptx' | 'txt' | 'md';
export const KIND_FILTERS: KindFilter[] = ['all', 'pdf', 'docx', 'pptx', 'txt', 'md'];

export interface DocumentQuery {
  search: string;
  sort: SortKey;
  status: StatusFilter;
  kind: KindFilter;
}

export const DEFAULT_QUERY: DocumentQuery = { search: '', sort: 'newest', status: 'all', kind: 'all' };

/** Lower case without Vietnamese diacritics (đ as d): "bai giang" finds "Bài giảng". */
export function foldText(text: string): string {
  return text.normalize('NFD').replace(/[\u0300-\u036f]/g, '').replace(/đ/gi, 'd').toLowerCase();
}

export function statusGroup(file: StoredFile): Exclude<StatusFilter, 'all'> | 'unknown' {
  switch (file.status) {
    case 'FILE_STATUS_READY':
      return 'ready';
    case 'FILE_STATUS_FAILED':
      return 'failed';
    case 'FILE_STATUS_QUEUED':
    case 'FILE_STATUS_PROCESSING':
      return 'processing';
    default:
      return 'unknown';
  }
}

/** The file's type from what storage found in its bytes (kind), else from its name. */
export function kindOf(file: StoredFile): Exclude<KindFilter, 'all'> | 'other' {
  const kind = (file.kind ?? '').replace('FILE_KIND_', '').toLowerCase();
  if ((KIND_FILTERS as string[]).includes(kind) && kind !== 'all') return kind as Exclude<KindFilter, 'all'>;
  const extension = (file.file_name ?? '').toLowerCase().split('.').pop() ?? '';
  if (extension === 'markdown') return 'md';
  return (KIND_FILTERS as string[]).includes(extension) && extension !== 'all' ? (extension as Exclude<KindFilter, 'all'>) : 'other';
}

const time = (file: StoredFile) => {
  const parsed = Date.parse(file.created_at ?? '');
  return Number.isNaN(parsed) ? 0 : parsed;
};
const size = (file: StoredFile) => Number(file.size_bytes ?? 0) || 0;
const collator = new Intl.Collator(['vi', 'en'], { sensitivity: 'base', numeric: true });
const byName = (a: StoredFile, b: StoredFile) => collator.compare(a.file_name ?? '', b.file_name ?? '');

const COMPARE: Record<SortKey, (a: StoredFile, b: StoredFile) => number> = {
  newest: (a, b) => time(b) - time(a) || byName(a, b),
  oldest: (a, b) => time(a) - time(b) || byName(a, b),
  name: (a, b) => byName(a, b) || time(b) - time(a),
  nameDesc: (a, b) => byName(b, a) || time(b) - time(a),
  largest: (a, b) => size(b) - size(a) || byName(a, b),
  smallest: (a, b) => size(a) - size(b) || byName(a, b),
};

/** The files the page shows for ``query``: matching every word of the search, in its sort order. */
export function visibleFiles(files: readonly StoredFile[], query: DocumentQuery): StoredFile[] {
  const words = foldText(query.search).split(/\s+/).filter(Boolean);
  return files
    .filter((file) => {
      if (query.status !== 'all' && statusGroup(file) !== query.status) return false;
      if (query.kind !== 'all' && kindOf(file) !== query.kind) return false;
      const name = foldText(file.file_name ?? '');
      return words.every((word) => name.includes(word));
    })
    .sort(COMPARE[query.sort]);
}

export interface BulkResult {
  deleted: string[];
  failed: Array<{ file: StoredFile; error: unknown }>;
}

/** Delete each file through ``remove`` (a few at a time), collecting which went and which did not. */
export async function deleteEach(
  files: readonly StoredFile[],
  remove: (file: StoredFile) => Promise<unknown>,
  parallel = 4,
): Promise<BulkResult> {
  const result: BulkResult = { deleted: [], failed: [] };
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const file = files[next++];
      try {
        await remove(file);
        result.deleted.push(file.file_id);
      } catch (error) {
        result.failed.push({ file, error });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, files.length) }, worker));
  return result;
}
