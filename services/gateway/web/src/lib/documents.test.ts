import { describe, expect, it } from 'vitest';
import type { StoredFile } from '../api/types';
import { deleteEach, DEFAULT_QUERY, foldText, kindOf, visibleFiles } from './documents';

const file = (file_id: string, file_name: string, extra: Partial<StoredFile> = {}): StoredFile => ({
  file_id,
  file_name,
  status: 'FILE_STATUS_READY',
  size_bytes: '1000',
  created_at: '2026-09-01T08:00:00Z',
  ...extra,
});

const semester = [
  file('a', 'Bài giảng Mạng máy tính - Chương 1.pdf', { kind: 'FILE_KIND_PDF', size_bytes: '5000', created_at: '2026-09-03T08:00:00Z' }),
  file('b', 'bai tap ctdl.docx', { kind: 'FILE_KIND_DOCX', size_bytes: '200', created_at: '2026-09-01T08:00:00Z' }),
  file('c', 'Slide Hệ điều hành.pptx', { kind: 'FILE_KIND_PPTX', status: 'FILE_STATUS_PROCESSING', created_at: '2026-09-02T08:00:00Z' }),
  file('d', 'ghi chú.md', { kind: 'FILE_KIND_MD', status: 'FILE_STATUS_FAILED', size_bytes: '10' }),
  file('e', 'Bài giảng Mạng máy tính - Chương 10.pdf', { kind: 'FILE_KIND_PDF', status: 'FILE_STATUS_QUEUED' }),
];
const ids = (files: StoredFile[]) => files.map((f) => f.file_id);

describe('visibleFiles', () => {
  it('searches names by every word, without diacritics or case', () => {
    expect(foldText('Đường đi ngắn nhất')).toBe('duong di ngan nhat');
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, search: 'bai giang mang' }))).toEqual(['a', 'e']);
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, search: 'HỆ ĐIỀU' }))).toEqual(['c']);
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, search: 'không có' }))).toEqual([]);
  });

  it('sorts by date, name (numbers in order) and size', () => {
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, sort: 'newest' }))).toEqual(['a', 'c', 'e', 'b', 'd']);
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, sort: 'oldest' }))[0]).not.toBe('a');
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, sort: 'name' }))).toEqual(['a', 'e', 'b', 'd', 'c']);
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, sort: 'nameDesc' }))).toEqual(['c', 'd', 'b', 'e', 'a']);
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, sort: 'largest' }))).toEqual(['a', 'e', 'c', 'b', 'd']);
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, sort: 'smallest' }))[0]).toBe('d');
  });

  it('filters by status group and by type', () => {
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, status: 'processing', sort: 'name' }))).toEqual(['e', 'c']);
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, status: 'failed' }))).toEqual(['d']);
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, kind: 'pdf', sort: 'name' }))).toEqual(['a', 'e']);
    expect(ids(visibleFiles(semester, { ...DEFAULT_QUERY, kind: 'pdf', status: 'ready' }))).toEqual(['a']);
    // Without a kind (an older server), the name's extension says the type.
    expect(kindOf({ file_id: 'x', file_name: 'notes.markdown' })).toBe('md');
    expect(kindOf({ file_id: 'x', file_name: 'README' })).toBe('other');
  });
});

describe('deleteEach', () => {
  it('deletes every file and reports those that failed', async () => {
    const seen: string[] = [];
    const result = await deleteEach(semester, async (f) => {
      seen.push(f.file_id);
      if (f.file_id === 'c') throw new Error('busy');
    }, 2);
    expect(seen.sort()).toEqual(['a', 'b', 'c', 'd', 'e']);
    expect(result.deleted.sort()).toEqual(['a', 'b', 'd', 'e']);
    expect(result.failed.map((f) => [f.file.file_id, (f.error as Error).message])).toEqual([['c', 'busy']]);
  });
});
