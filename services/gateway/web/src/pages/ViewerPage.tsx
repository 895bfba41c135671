import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';
import type { ApiClient } from '../api/client';
import type { StoredFile } from '../api/types';
import { ErrorBanner } from '../components/ErrorBanner';
import { useApp } from '../context';
import { useI18n } from '../i18n';
import { fileFormat, locationLabel, type FileFormat } from '../lib/location';
import { displaySegments, passageItems, type FileChunk } from '../lib/viewer';
import { navigate } from '../router';
import './viewer.css';

interface ChunkPage {
  file?: StoredFile;
  chunks?: FileChunk[];
  next_page_token?: string;
  previous_page_token?: string;
}

// Passages per request: a screenful or two; a file may have tens of thousands.
const PAGE_SIZE = 40;

function listChunks(client: ApiClient, fileId: string, query: Record<string, string | number | undefined>, signal?: AbortSignal) {
  return client.get<ChunkPage>(`/v1/files/${encodeURIComponent(fileId)}/chunks`, query, signal);
}

/** The original file, fetched with the token in a header (never in a URL), saved under its own name. */
async function download(client: ApiClient, fileId: string, fileName: string): Promise<void> {
  const response = await client.fetch('GET', `/v1/files/${encodeURIComponent(fileId)}:download`, {}, { Accept: '*/*' });
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement('a');
  link.href = url;
  link.download = fileName || 'download';
  document.body.append(link);
  link.click();
  link.remove();
  // The browser has taken the bytes once the click is handled.
  window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** The source viewer: a PDF's page rendered by pdf.js, any other format's extracted text, at the citation. */
export default function ViewerPage({ fileId, chunkId, pageNumber }: { fileId: string; chunkId: string; pageNumber: number }) {
  const { client } = useApp();
  const { t } = useI18n();
  const [file, setFile] = useState<StoredFile | null>(null);
  const [cited, setCited] = useState<FileChunk | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [downloadError, setDownloadError] = useState<unknown>(null);
  const [downloading, setDownloading] = useState(false);

  useEffect(() => {
    const abort = new AbortController();
    setFile(null);
    setCited(null);
    setError(null);
    // With page_size 1 the page starts at the cited chunk itself: its text and place in one call.
    listChunks(client, fileId, chunkId ? { chunk_id: chunkId, page_size: 1 } : { page_size: 1 }, abort.signal)
      .then((page) => {
        setFile(page.file ?? { file_id: fileId });
        setCited(chunkId ? (page.chunks?.[0] ?? null) : null);
      })
      .catch((caught) => !abort.signal.aborted && setError(caught));
    return () => abort.abort();
  }, [client, fileId, chunkId]);

  const format = file ? fileFormat(file) : '';
  const where = cited ? locationLabel(format, cited, t) : '';
  const startPage = pageNumber || cited?.page || 1;

  const save = async () => {
    setDownloading(true);
    setDownloadError(null);
    try {
      await download(client, fileId, file?.file_name ?? '');
    } catch (caught) {
      setDownloadError(caught);
    } finally {
      setDownloading(false);
    }
  };

  return (
    <div className="viewer pad" data-testid="viewer" data-format={format}>
      <header className="viewer-header">
        {/* Back to the chat it was opened from; opened on its own (a new tab), to the documents. */}
        <button type="button" className="ghost" onClick={() => (history.length > 1 ? history.back() : navigate('#/documents'))}>
          ← {t('viewer.back')}
        </button>
        <h2 data-testid="viewer-file">{file?.file_name ?? t('viewer.title')}</h2>
        {where && (
          <span className="muted" data-testid="viewer-location">
            {where}
          </span>
        )}
        <button
          type="button"
          className="viewer-download"
          onClick={() => void save()}
          disabled={!file || downloading}
          data-testid="viewer-download"
        >
          {t('viewer.download')}
        </button>
      </header>
      <ErrorBanner error={downloadError} onDismiss={() => setDownloadError(null)} />
      <ErrorBanner error={error} />
      {!file && !error && <p className="muted">{t('viewer.loading')}</p>}
      {file && format === 'pdf' && <PdfView client={client} fileId={fileId} passage={cited?.text ?? ''} startPage={startPage} />}
      {file && format !== 'pdf' && (
        <TextView client={client} fileId={fileId} format={format} chunkId={chunkId} pageNumber={chunkId ? 0 : pageNumber} />
      )}
    </div>
  );
}

function PdfView({ client, fileId, passage, startPage }: { client: ApiClient; fileId: string; passage: string; startPage: number }) {
  const { t } = useI18n();
  const [pdf, setPdf] = useState<import('../lib/pdf').PDFDocumentProxy | null>(null);
  const [pageNo, setPageNo] = useState(startPage);
  const [error, setError] = useState<unknown>(null);
  const [failed, setFailed] = useState(false);
  const [found, setFound] = useState<boolean | null>(null);
  const canvasRef = useRef<HTMLCanvasElement>(null);
  const layerRef = useRef<HTMLDivElement>(null);
  const pageRef = useRef<HTMLDivElement>(null);

  useEffect(() => setPageNo(startPage), [startPage]);

  useEffect(() => {
    let live = true;
    let opened: import('../lib/pdf').PDFDocumentProxy | null = null;
    (async () => {
      const response = await client.fetch('GET', `/v1/files/${encodeURIComponent(fileId)}:download`, {}, { Accept: 'application/pdf' });
      const bytes = await response.arrayBuffer();
      const { openPdf } = await import('../lib/pdf');
      try {
        opened = await openPdf(bytes);
      } catch {
        if (live) setFailed(true);
        return;
      }
      if (live) setPdf(opened);
      else void opened.destroy();
    })().catch((caught) => live && setError(caught));
    return () => {
      live = false;
      void opened?.destroy();
    };
  }, [client, fileId]);

  const pages = pdf?.numPages ?? 0;
  const shown = pages ? Math.min(Math.max(1, pageNo), pages) : pageNo;

  useEffect(() => {
    if (!pdf) return;
    let cancelled = false;
    const cleanups: (() => void)[] = [];
    setFound(null);
    (async () => {
      const { TextLayer } = await import('../lib/pdf');
      const page = await pdf.getPage(shown);
      const canvas = canvasRef.current;
      const layer = layerRef.current;
      const holder = pageRef.current;
      if (cancelled || !canvas || !layer || !holder) return;
      const natural = page.getViewport({ scale: 1 });
      const width = holder.parentElement?.clientWidth || natural.width;
      const viewport = page.getViewport({ scale: Math.min(2, Math.max(0.5, width / natural.width)) });
      const ratio = window.devicePixelRatio || 1;
      canvas.width = Math.floor(viewport.width * ratio);
      canvas.height = Math.floor(viewport.height * ratio);
      canvas.style.width = `${viewport.width}px`;
      canvas.style.height = `${viewport.height}px`;
      holder.style.width = `${viewport.width}px`;
      holder.style.height = `${viewport.height}px`;
      holder.style.setProperty('--total-scale-factor', String(viewport.scale));
      const render = page.render({ canvas, viewport, transform: ratio === 1 ? undefined : [ratio, 0, 0, ratio, 0, 0] });
      cleanups.push(() => render.cancel());
      layer.replaceChildren();
      const text = new TextLayer({ textContentSource: page.streamTextContent(), container: layer, viewport });
      cleanups.push(() => text.cancel());
      await Promise.all([render.promise, text.render()]);
      if (cancelled) return;
      // Marked on the cited page only: the same words elsewhere are not what was cited.
      const onCitedPage = passage !== '' && shown === startPage;
      const marked = onCitedPage ? passageItems(text.textContentItemsStr, passage) : [];
      marked.forEach((index) => text.textDivs[index]?.classList.add('cited'));
      setFound(onCitedPage ? marked.length > 0 : null);
      text.textDivs[marked[0]]?.scrollIntoView({ block: 'center' });
    })().catch((caught: unknown) => {
      // A cancelled render (the student turned the page meanwhile) is no failure.
      if (!cancelled && !(caught instanceof Error && caught.name === 'RenderingCancelledException')) setFailed(true);
    });
    return () => {
      cancelled = true;
      cleanups.forEach((cleanup) => cleanup());
    };
  }, [pdf, shown, passage, startPage]);

  if (error) return <ErrorBanner error={error} />;
  if (failed) return <p role="alert">{t('viewer.pdfFailed')}</p>;
  return (
    <div className="pdf-view">
      <nav className="pdf-nav" aria-label={t('viewer.title')}>
        <button type="button" onClick={() => setPageNo(shown - 1)} disabled={!pdf || shown <= 1} data-testid="pdf-prev">
          ← {t('viewer.prevPage')}
        </button>
        <span data-testid="pdf-page-label" data-page={shown}>
          {pages ? t('viewer.pageOf', { n: shown, total: pages }) : t('viewer.loading')}
        </span>
        <button type="button" onClick={() => setPageNo(shown + 1)} disabled={!pdf || shown >= pages} data-testid="pdf-next">
          {t('viewer.nextPage')} →
        </button>
      </nav>
      {found === false && (
        <div className="pdf-missing" role="note">
          <p>{t('viewer.notOnPage')}</p>
          <blockquote className="snippet">{passage}</blockquote>
        </div>
      )}
      <div className="pdf-frame">
        <div className="pdf-page" ref={pageRef} data-testid="pdf-page">
          <canvas ref={canvasRef} aria-label={t('viewer.pageOf', { n: shown, total: pages })} role="img" />
          <div className="textLayer" ref={layerRef} />
        </div>
      </div>
    </div>
  );
}

function sectionLabel(format: FileFormat, chunk: FileChunk, t: (key: string, vars?: Record<string, string | number>) => string): string {
  const where = locationLabel(format, chunk, t);
  if (where === (chunk.heading ?? '').trim()) return where; // a heading path, as the document writes it
  // "trang chiếu 3" heads its section as "Trang chiếu 3", with the slide's title beside it.
  const numbered = where.charAt(0).toLocaleUpperCase() + where.slice(1);
  return format === 'pptx' && chunk.heading ? `${numbered} · ${chunk.heading}` : numbered;
}

function TextView({
  client,
  fileId,
  format,
  chunkId,
  pageNumber,
}: {
  client: ApiClient;
  fileId: string;
  format: FileFormat;
  chunkId: string;
  pageNumber: number;
}) {
  const { t } = useI18n();
  const [chunks, setChunks] = useState<FileChunk[]>([]);
  const [tokens, setTokens] = useState({ previous: '', next: '' });
  const [loaded, setLoaded] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const citedRef = useRef<HTMLElement>(null);

  useEffect(() => {
    const abort = new AbortController();
    setLoaded(false);
    setError(null);
    const query = chunkId ? { chunk_id: chunkId, page_size: PAGE_SIZE } : pageNumber ? { page: pageNumber, page_size: PAGE_SIZE } : { page_size: PAGE_SIZE };
    listChunks(client, fileId, query, abort.signal)
      .then((page) => {
        setChunks(page.chunks ?? []);
        setTokens({ previous: page.previous_page_token ?? '', next: page.next_page_token ?? '' });
        setLoaded(true);
      })
      .catch((caught) => !abort.signal.aborted && setError(caught));
    return () => abort.abort();
  }, [client, fileId, chunkId, pageNumber]);

  // Once the passages are on screen, bring the cited one to the middle (before the first paint).
  useLayoutEffect(() => {
    if (loaded) citedRef.current?.scrollIntoView({ block: 'center' });
  }, [loaded]);

  const more = useCallback(
    async (direction: 'previous' | 'next') => {
      const token = tokens[direction];
      if (!token) return;
      setBusy(true);
      try {
        const page = await listChunks(client, fileId, { page_token: token, page_size: PAGE_SIZE, chunk_id: chunkId || undefined });
        const known = new Set(chunks.map((c) => c.chunk_index ?? 0));
        const fresh = (page.chunks ?? []).filter((c) => !known.has(c.chunk_index ?? 0));
        setChunks(direction === 'previous' ? [...fresh, ...chunks] : [...chunks, ...fresh]);
        setTokens((current) => ({
          ...current,
          [direction]: (direction === 'previous' ? page.previous_page_token : page.next_page_token) ?? '',
        }));
      } catch (caught) {
        setError(caught);
      } finally {
        setBusy(false);
      }
    },
    [client, fileId, chunkId, chunks, tokens],
  );

  const segments = useMemo(() => displaySegments(chunks, chunkId), [chunks, chunkId]);

  if (error) return <ErrorBanner error={error} />;
  if (!loaded) return <p className="muted">{t('viewer.loading')}</p>;
  if (chunks.length === 0) return <p className="muted">{t('viewer.noText')}</p>;
  let lastLabel: string | null = null;
  return (
    <div className="text-view" data-testid="text-view">
      {tokens.previous && (
        <button type="button" className="ghost" onClick={() => void more('previous')} disabled={busy} data-testid="viewer-earlier">
          ↑ {t('viewer.earlier')}
        </button>
      )}
      {segments.map(({ chunk, text }) => {
        const label = sectionLabel(format, chunk, t);
        const isCited = chunk.chunk_id === chunkId;
        // A section's place heads its first passage, and the cited passage always says where it is.
        const heading = label && (label !== lastLabel || isCited) ? label : '';
        lastLabel = label;
        return (
          <section
            key={chunk.chunk_index ?? chunk.chunk_id}
            className={`passage ${isCited ? 'cited' : ''}`}
            data-testid={isCited ? 'cited-passage' : 'passage'}
            data-chunk-id={chunk.chunk_id}
            data-page={chunk.page ?? 0}
            ref={isCited ? citedRef : undefined}
            aria-label={isCited ? t('viewer.cited') : undefined}
          >
            {heading && (
              <h3 className="passage-place" data-testid="passage-place">
                {heading}
              </h3>
            )}
            {isCited ? <mark>{text}</mark> : text}
          </section>
        );
      })}
      {tokens.next && (
        <button type="button" className="ghost" onClick={() => void more('next')} disabled={busy} data-testid="viewer-later">
          ↓ {t('viewer.later')}
        </button>
      )}
    </div>
  );
}
