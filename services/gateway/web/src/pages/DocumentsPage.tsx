import { useCallback, useEffect, useRef, useState, type DragEvent } from 'react';
import type { StoredFile } from '../api/types';
import { ACCEPTED_EXTENSIONS, triageUploads, uploadFile } from '../api/upload';
import { ErrorBanner } from '../components/ErrorBanner';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { formatBytes, newestFirst } from '../lib/format';

interface UploadItem {
  key: string;
  name: string;
  size: number;
  progress: number;
  state: 'uploading' | 'done' | 'error';
  error: unknown;
  abort: () => void;
}

const TERMINAL = new Set(['FILE_STATUS_READY', 'FILE_STATUS_FAILED']);
const PARALLEL_UPLOADS = 3;

let uploadCounter = 0;

export function DocumentsPage() {
  const { client, chatFileIds, setChatFileIds, uploadMaxBytes } = useApp();
  const { t } = useI18n();
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
          const stored = await handle.promise;
          setUpload(key, { state: 'done', progress: 1 });
          uploaded.current.add(stored.file_id);
          upsert(stored);
          // Finished uploads leave the list after a moment; the file table shows them now.
          window.setTimeout(() => setUploads((items) => items.filter((u) => u.key !== key)), 3000);
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

  const remove = async (file: StoredFile) => {
    if (!window.confirm(t('docs.confirmDelete', { name: file.file_name ?? file.file_id }))) return;
    try {
      await client.json('DELETE', `/v1/files/${encodeURIComponent(file.file_id)}`);
      watches.current.get(file.file_id)?.abort();
      uploaded.current.delete(file.file_id);
      setFiles((list) => list.filter((f) => f.file_id !== file.file_id));
      if (chatFileIds.includes(file.file_id)) setChatFileIds(chatFileIds.filter((id) => id !== file.file_id));
    } catch (caught) {
      setError(caught);
    }
  };

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
              <span className="muted small">
                {upload.state === 'done' ? t('docs.uploaded') : `${Math.round(upload.progress * 100)}%`}
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
      {files.length > 0 && (
        <>
          <p className="muted small">{chatFileIds.length === 0 ? t('docs.useAllHint') : t('chat.docsSome', { count: chatFileIds.length })}</p>
          <ul className="file-list" data-testid="file-list">
            {files.map((file) => {
              const status = file.status ?? 'FILE_STATUS_UNSPECIFIED';
              const total = file.chunks_total ?? 0;
              const done = file.chunks_done ?? 0;
              return (
                <li key={file.file_id} className="file-row" data-testid="file-row" data-status={status} data-file-id={file.file_id}>
                  <label className="use-in-chat" title={t('docs.useInChat')}>
                    <input
                      type="checkbox"
                      checked={chatFileIds.includes(file.file_id)}
                      disabled={status !== 'FILE_STATUS_READY'}
                      onChange={() => toggleChat(file.file_id)}
                      aria-label={`${t('docs.useInChat')}: ${file.file_name ?? ''}`}
                    />
                  </label>
                  <span className="file-name">{file.file_name}</span>
                  <span className="muted small">{formatBytes(file.size_bytes)}</span>
                  <span className={`status status-${status.replace('FILE_STATUS_', '').toLowerCase()}`} data-testid="file-status">
                    {t(`docs.status.${status}`)}
                    {status === 'FILE_STATUS_PROCESSING' && total > 0 ? ` · ${t('docs.chunks', { done, total })}` : ''}
                  </span>
                  {!TERMINAL.has(status) && total > 0 && <progress max={total} value={done} />}
                  {status === 'FILE_STATUS_FAILED' && file.error && (
                    <span className="file-error" data-testid="file-error">
                      {file.error}
                    </span>
                  )}
                  <button type="button" className="ghost small" onClick={() => void remove(file)} data-testid="delete-file">
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
