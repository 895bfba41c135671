import { useCallback, useEffect, useMemo, useRef, useState, type DragEvent } from 'react';
import { ApiError } from '../api/errors';
import { ingestFailure } from '../lib/ingestFailure';
import type { StoredFile } from '../api/types';
import { ACCEPTED_EXTENSIONS, triageUploads, uploadFile } from '../api/upload';
import { ErrorBanner } from '../components/ErrorBanner';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import {
  DEFAULT_QUERY,
  deleteEach,
  KIND_FILTERS,
  kindOf,
  SORT_KEYS,
  STATUS_FILTERS,
  visibleFiles,
  type BulkResult,
  type DocumentQuery,
} from '../lib/documents';
import { formatBytes, formatTime, newestFirst } from '../lib/format';

interface UploadItem {
  key: string;
  name: string;
  size: number;
  progress: number;
  /** merged: the server already had these bytes as one of the student's files (no second copy). */
  state: 'uploading' | 'done' | 'merged' | 'error';
  error: unknown;
  abort: () => void;
  /** The file it was merged into. */
  mergedInto?: string;
}

const TERMINAL = new Set(['FILE_STATUS_READY', 'FILE_STATUS_FAILED']);
const PARALLEL_UPLOADS = 3;

let uploadCounter = 0;

export function DocumentsPage() {
  const { client, chatFileIds, setChatFileIds, uploadMaxBytes } = useApp();
  const { t, lang } = useI18n();
  const [query, setQuery] = useState<DocumentQuery>(DEFAULT_QUERY);
  const [selected, setSelected] = useState<Set<string>>(() => new Set());
  const [bulk, setBulk] = useState<BulkResult | null>(null);
  const [deleting, setDeleting] = useState(false);
  // The row a re-upload was merged into, marked for a moment so the student sees where it went.
  const [mergedFileId, setMergedFileId] = useState('');
  const [files, setFiles] = useState<StoredFile[]>([]);
  const [loaded, setLoaded] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [uploads, setUploads] = useState<UploadItem[]>([]);
  const [rejections, setRejections] = useState<string[]>([]);
  const [dragging, setDragging] = useState(false);
  const inputRef = useRef<HTMLInputElement>(null);
  const watches = useRef(new Map<string, AbortController>());

  const upsert = useCallback((file: StoredFile) => {
    setFiles((list) => {
      const index = list.findIndex((f) => f.file_id === file.file_id);
      if (index < 0) return [file, ...list];
      const next = [...list];
      next[index] = { ...list[index], ...file };
      return next;
    });
  }, []);

  // Files this page uploaded: a list that was requested before an upload finished must not drop them.
  const uploaded = useRef(new Set<string>());

  const load = useCallback(async () => {
    try {
      const response = await client.get<{ files?: StoredFile[] }>('/v1/files', { page_size: 200 });
      const listed = response.files ?? [];
      setFiles((current) => {
        const ids = new Set(listed.map((f) => f.file_id));
        const missing = current.filter((f) => uploaded.current.has(f.file_id) && !ids.has(f.file_id));
        return newestFirst([...missing, ...listed], (f) => f.created_at);
      });
      setError(null);
    } catch (caught) {
      setError(caught);
    } finally {
      setLoaded(true);
    }
  }, [client]);

  useEffect(() => {
    void load();
  }, [load]);

  // Follow every file that is still being ingested through its :watch stream.
  const watch = useCallback(
    (fileId: string) => {
      if (watches.current.has(fileId)) return;
      const controller = new AbortController();
      watches.current.set(fileId, controller);
      const run = async (attempt: number): Promise<void> => {
        let last: StoredFile | null = null;
        try {
          await client.stream<StoredFile>('GET', `/v1/files/${encodeURIComponent(fileId)}:watch`, { signal: controller.signal }, (file) => {
            last = file;
            upsert({ ...file, file_id: file.file_id || fileId });
          });
        } catch {
          if (controller.signal.aborted) return;
        }
        const status = (last as StoredFile | null)?.status;
        // The stream ended early (gateway restart, network): poll once more and resume.
        if (!controller.signal.aborted && (!status || !TERMINAL.has(status)) && attempt < 5) {
          await new Promise((resolve) => window.setTimeout(resolve, 1000 * (attempt + 1)));
          try {
            const file = await client.get<StoredFile>(`/v1/files/${encodeURIComponent(fileId)}`, undefined, controller.signal);
            upsert(file);
            if (file.status && TERMINAL.has(file.status)) return;
          } catch {
            if (controller.signal.aborted) return;
          }
          return run(attempt + 1);
        }
      };
      void run(0).finally(() => {
        if (watches.current.get(fileId) === controller) watches.current.delete(fileId);
      });
    },
    [client, upsert],
  );

  useEffect(() => {
    for (const file of files) if (!TERMINAL.has(file.status ?? '')) watch(file.file_id);
  }, [files, watch]);

  useEffect(() => {
    const active = watches.current;
    return () => {
      for (const controller of active.values()) controller.abort();
      active.clear();
    };
  }, []);

  const setUpload = (key: string, change: Partial<UploadItem>) =>
    setUploads((list) => list.map((u) => (u.key === key ? { ...u, ...change } : u)));

  // A small queue: a few uploads at a time so one big file does not starve the rest.
  const queue = useRef<Array<() => Promise<void>>>([]);
  const running = useRef(0);
  const pump = useCallback(() => {
    while (running.current < PARALLEL_UPLOADS && queue.current.length > 0) {
      const job = queue.current.shift()!;
      running.current++;
      void job().finally(() => {
        running.current--;
        pump();
      });
    }
  }, []);

  const addFiles = (list: FileList | File[]) => {
    // Too large for this server (its UPLOAD_MAX_BYTES), empty or of a wrong type: said at once, never sent.
    const { accepted, rejected } = triageUploads(Array.from(list), uploadMaxBytes, t);
    for (const file of accepted) {
      const key = `u${++uploadCounter}`;
      let abort = () => undefined as void;
      setUploads((items) => [...items, { key, name: file.name, size: file.size, progress: 0, state: 'uploading', error: null, abort: () => abort() }]);
      queue.current.push(async () => {
        const handle = uploadFile(client, file, (progress) => setUpload(key, { progress }));
        abort = handle.abort;
        try {
          const { merged, ...stored } = await handle.promise;
          uploaded.current.add(stored.file_id);
          upsert(stored);
          if (merged) {
            // Same bytes as a file already here: said, and that row marked, instead of a look-alike copy.
            setUpload(key, { state: 'merged', progress: 1, mergedInto: stored.file_name ?? '' });
            setMergedFileId(stored.file_id);
          } else {
            setUpload(key, { state: 'done', progress: 1 });
          }
          // Finished uploads leave the list after a moment (a merge is said for longer); the file table shows them now.
          window.setTimeout(() => setUploads((items) => items.filter((u) => u.key !== key)), merged ? 10000 : 3000);
        } catch (caught) {
          setUpload(key, { state: 'error', error: caught });
        }
      });
    }
    setRejections(rejected);
    pump();
  };

  const onDrop = (event: DragEvent) => {
    event.preventDefault();
    setDragging(false);
    if (event.dataTransfer.files.length > 0) addFiles(event.dataTransfer.files);
  };

  // One file through the API; gone already (another tab deleted it) counts as deleted.
  const deleteOne = async (file: StoredFile) => {
    try {
      await client.json('DELETE', `/v1/files/${encodeURIComponent(file.file_id)}`);
    } catch (caught) {
      if (!(caught instanceof ApiError && caught.status === 404)) throw caught;
    }
  };

  const forget = (ids: readonly string[]) => {
    const gone = new Set(ids);
    for (const id of ids) {
      watches.current.get(id)?.abort();
      uploaded.current.delete(id);
    }
    setFiles((list) => list.filter((f) => !gone.has(f.file_id)));
    setSelected((current) => new Set([...current].filter((id) => !gone.has(id))));
    if (chatFileIds.some((id) => gone.has(id))) setChatFileIds(chatFileIds.filter((id) => !gone.has(id)));
  };

  const remove = async (file: StoredFile) => {
    if (!window.confirm(t('docs.confirmDelete', { name: file.file_name ?? file.file_id }))) return;
    try {
      await deleteOne(file);
      forget([file.file_id]);
    } catch (caught) {
      setError(caught);
    }
  };

  const shown = useMemo(() => visibleFiles(files, query), [files, query]);
  const chosen = files.filter((f) => selected.has(f.file_id));
  const allShownSelected = shown.length > 0 && shown.every((f) => selected.has(f.file_id));
  const toggleSelected = (fileId: string) =>
    setSelected((current) => {
      const next = new Set(current);
      if (next.has(fileId)) next.delete(fileId);
      else next.add(fileId);
      return next;
    });
  const toggleAllShown = () =>
    setSelected((current) => {
      const next = new Set(current);
      for (const file of shown) {
        if (allShownSelected) next.delete(file.file_id);
        else next.add(file.file_id);
      }
      return next;
    });

  const removeSelected = async () => {
    if (chosen.length === 0) return;
    if (!window.confirm(t('docs.confirmBulkDelete', { count: chosen.length }))) return;
    setDeleting(true);
    try {
      const result = await deleteEach(chosen, deleteOne);
      forget(result.deleted);
      setBulk(result);
    } finally {
      setDeleting(false);
    }
  };

  useEffect(() => {
    if (!mergedFileId) return;
    const timer = window.setTimeout(() => setMergedFileId(''), 10000);
    return () => window.clearTimeout(timer);
  }, [mergedFileId]);

  const toggleChat = (fileId: string) =>
    setChatFileIds(chatFileIds.includes(fileId) ? chatFileIds.filter((id) => id !== fileId) : [...chatFileIds, fileId]);

  return (
    <section className="documents-page">
      <h1>{t('docs.title')}</h1>
      <div
        className={`dropzone ${dragging ? 'dragging' : ''}`}
        onDragOver={(e) => {
          e.preventDefault();
          setDragging(true);
        }}
        onDragLeave={() => setDragging(false)}
        onDrop={onDrop}
        data-testid="dropzone"
      >
        <p>
          {t('docs.drop')}{' '}
          <button type="button" className="link" onClick={() => inputRef.current?.click()}>
            {t('docs.pick')}
          </button>
        </p>
        <p className="muted small" data-testid="upload-limit">
          {t('docs.accepted', { size: formatBytes(uploadMaxBytes) })}
        </p>
        <input
          ref={inputRef}
          type="file"
          multiple
          hidden
          accept={ACCEPTED_EXTENSIONS.join(',')}
          data-testid="file-input"
          onChange={(e) => {
            if (e.target.files) addFiles(e.target.files);
            e.target.value = '';
          }}
        />
      </div>
      {rejections.map((text) => (
        <div key={text} className="error-banner" role="alert">
          {text}
        </div>
      ))}
      {uploads.length > 0 && (
        <ul className="uploads" data-testid="uploads">
          {uploads.map((upload) => (
            <li key={upload.key} className={`upload ${upload.state}`}>
              <span className="upload-name">{upload.name}</span>
              <progress max={1} value={upload.progress} aria-label={`${t('docs.uploading')} ${upload.name}`} />
              <span className="muted small" role={upload.state === 'merged' ? 'status' : undefined} data-testid="upload-state">
                {upload.state === 'done'
                  ? t('docs.uploaded')
                  : upload.state === 'merged'
                    ? t('docs.merged', { name: upload.mergedInto ?? '' })
                    : `${Math.round(upload.progress * 100)}%`}
              </span>
              {upload.state === 'uploading' && (
                <button type="button" className="ghost small" onClick={upload.abort}>
                  {t('docs.cancel')}
                </button>
              )}
              {upload.state === 'error' && (
                <ErrorBanner error={upload.error} onDismiss={() => setUploads((items) => items.filter((u) => u.key !== upload.key))} />
              )}
            </li>
          ))}
        </ul>
      )}
      <ErrorBanner error={error} onRetry={() => void load()} />
      {loaded && files.length === 0 && !error && <p className="muted">{t('docs.empty')}</p>}
      {bulk && (bulk.deleted.length > 0 || bulk.failed.length > 0) && (
        <div className={bulk.failed.length ? 'error-banner' : 'notice'} role={bulk.failed.length ? 'alert' : 'status'} data-testid="bulk-result">
          <span className="error-text">
            {bulk.failed.length === 0
              ? t('docs.bulkDeleted', { count: bulk.deleted.length })
              : t('docs.bulkPartly', {
                  count: bulk.deleted.length,
                  failed: bulk.failed.length,
                  names: bulk.failed.map((f) => f.file.file_name ?? f.file.file_id).join(', '),
                })}
          </span>
          {bulk.failed.length > 0 && <ErrorBanner error={bulk.failed[0].error} />}
          <button type="button" className="ghost" onClick={() => setBulk(null)} aria-label={t('common.dismiss')}>
            ×
          </button>
        </div>
      )}
      {files.length > 0 && (
        <>
          <div className="doc-toolbar" role="search" data-testid="doc-toolbar">
            <label className="doc-search">
              <span className="visually-hidden">{t('docs.search')}</span>
              <input
                type="search"
                placeholder={t('docs.search')}
                value={query.search}
                onChange={(e) => setQuery({ ...query, search: e.target.value })}
                data-testid="doc-search"
              />
            </label>
            <label>
              {t('docs.sort')}{' '}
              <select value={query.sort} onChange={(e) => setQuery({ ...query, sort: e.target.value as DocumentQuery['sort'] })} data-testid="doc-sort">
                {SORT_KEYS.map((key) => (
                  <option key={key} value={key}>
                    {t(`docs.sort.${key}`)}
                  </option>
                ))}
              </select>
            </label>
            <label>
              {t('docs.status')}{' '}
              <select value={query.status} onChange={(e) => setQuery({ ...query, status: e.target.value as DocumentQuery['status'] })} data-testid="doc-status-filter">
                {STATUS_FILTERS.map((key) => (
                  <option key={key} value={key}>
                    {t(`docs.filter.${key}`)}
                  </option>
                ))}
              </select>
            </label>
            <label>
              {t('docs.type')}{' '}
              <select value={query.kind} onChange={(e) => setQuery({ ...query, kind: e.target.value as DocumentQuery['kind'] })} data-testid="doc-kind-filter">
                {KIND_FILTERS.map((key) => (
                  <option key={key} value={key}>
                    {key === 'all' ? t('docs.filter.all') : key.toUpperCase()}
                  </option>
                ))}
              </select>
            </label>
          </div>
          <div className="doc-actions">
            <label className="select-all">
              <input type="checkbox" checked={allShownSelected} onChange={toggleAllShown} disabled={shown.length === 0} data-testid="select-all" />{' '}
              {t('docs.selectAll')}
            </label>
            <button
              type="button"
              className="danger small"
              disabled={chosen.length === 0 || deleting}
              onClick={() => void removeSelected()}
              data-testid="bulk-delete"
            >
              {t('docs.deleteSelected', { count: chosen.length })}
            </button>
            <span className="muted small" aria-live="polite" data-testid="doc-count">
              {t('docs.showing', { shown: shown.length, total: files.length })}
            </span>
          </div>
          <p className="muted small">{chatFileIds.length === 0 ? t('docs.useAllHint') : t('chat.docsSome', { count: chatFileIds.length })}</p>
          {shown.length === 0 && <p className="muted" data-testid="doc-no-match">{t('docs.noMatch')}</p>}
          <ul className="file-list" data-testid="file-list">
            {shown.map((file) => {
              const status = file.status ?? 'FILE_STATUS_UNSPECIFIED';
              const total = file.chunks_total ?? 0;
              const done = file.chunks_done ?? 0;
              const name = file.file_name ?? '';
              const kind = kindOf(file);
              return (
                <li
                  key={file.file_id}
                  className={`file-row${file.file_id === mergedFileId ? ' merged' : ''}`}
                  data-testid="file-row"
                  data-status={status}
                  data-file-id={file.file_id}
                  data-merged={file.file_id === mergedFileId ? 'true' : undefined}
                >
                  <input
                    type="checkbox"
                    className="select-file"
                    checked={selected.has(file.file_id)}
                    onChange={() => toggleSelected(file.file_id)}
                    aria-label={t('docs.select', { name })}
                    data-testid="select-file"
                  />
                  <span className="file-name">{name}</span>
                  <span className="file-kind small">{kind === 'other' ? '' : kind.toUpperCase()}</span>
                  <span className="muted small">{formatBytes(file.size_bytes)}</span>
                  <span className="muted small">{formatTime(file.created_at, lang)}</span>
                  <span className={`status status-${status.replace('FILE_STATUS_', '').toLowerCase()}`} data-testid="file-status">
                    {t(`docs.status.${status}`)}
                    {status === 'FILE_STATUS_PROCESSING' && total > 0 ? ` · ${t('docs.chunks', { done, total })}` : ''}
                  </span>
                  {!TERMINAL.has(status) && total > 0 && <progress max={total} value={done} aria-label={t('docs.progress', { name })} />}
                  {status === 'FILE_STATUS_FAILED' && (file.error || file.error_reason) && (
                    <span className="file-error" data-testid="file-error" title={file.error} data-reason={file.error_reason || undefined}>
                      {ingestFailure(file, t)}
                    </span>
                  )}
                  <label className="use-in-chat">
                    <input
                      type="checkbox"
                      checked={chatFileIds.includes(file.file_id)}
                      disabled={status !== 'FILE_STATUS_READY'}
                      onChange={() => toggleChat(file.file_id)}
                      aria-label={`${t('docs.useInChat')}: ${name}`}
                      data-testid="use-in-chat"
                    />{' '}
                    <span aria-hidden="true">{t('docs.useInChat')}</span>
                  </label>
                  <button
                    type="button"
                    className="ghost small"
                    onClick={() => void remove(file)}
                    aria-label={`${t('docs.delete')}: ${name}`}
                    data-testid="delete-file"
                  >
                    {t('docs.delete')}
                  </button>
                </li>
              );
            })}
          </ul>
        </>
      )}
    </section>
  );
}
