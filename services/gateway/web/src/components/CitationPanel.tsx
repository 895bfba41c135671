import { useEffect, useRef } from 'react';
import { useI18n } from '../i18n';
import { citationHref, type NumberedCitation } from '../lib/citations';
import { fileFormat, pageWordFor } from '../lib/location';

/** The cited passage: file, page, section and the snippet itself, all as plain text. */
export function CitationPanel({ citation, onClose }: { citation: NumberedCitation; onClose: () => void }) {
  const { t } = useI18n();
  // A PPTX citation's number is a slide, a PDF's a page; DOCX, Markdown and text have headings only.
  const pageWord = pageWordFor(fileFormat({ file_name: citation.file_name }));
  const closeRef = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    closeRef.current?.focus();
    const onKey = (event: KeyboardEvent) => event.key === 'Escape' && onClose();
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [onClose]);
  return (
    <div className="modal-scrim" onClick={onClose}>
      <div
        className="modal citation-panel"
        role="dialog"
        aria-modal="true"
        aria-labelledby="citation-title"
        data-testid="citation-panel"
        onClick={(e) => e.stopPropagation()}
      >
        <header>
          <h3 id="citation-title">
            [{citation.index}] {t('cite.title')}
          </h3>
          <button ref={closeRef} type="button" className="ghost" onClick={onClose} aria-label={t('cite.close')}>
            ×
          </button>
        </header>
        <dl>
          <dt>{t('cite.file')}</dt>
          <dd data-testid="citation-file">{citation.file_name || citation.file_id}</dd>
          {citation.page && pageWord ? (
            <>
              <dt data-testid="citation-page-word">{t(pageWord)}</dt>
              <dd data-testid="citation-page">{citation.page}</dd>
            </>
          ) : null}
          {citation.heading ? (
            <>
              <dt>{t('cite.heading')}</dt>
              <dd>{citation.heading}</dd>
            </>
          ) : null}
        </dl>
        <blockquote className="snippet" data-testid="citation-snippet">
          {citation.snippet}
        </blockquote>
        {citation.file_id ? (
          <a href={citationHref(citation)} onClick={onClose} data-testid="citation-open">
            {t('cite.openDocs')}
          </a>
        ) : null}
      </div>
    </div>
  );
}
