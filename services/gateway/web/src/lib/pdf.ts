// pdf.js, loaded only by the source viewer (a chunk of its own). Its worker is bundled by Vite and
// served by the gateway from /assets/ like every other script: no CDN, and the gateway's CSP
// ('self' for scripts and workers) allows it with nothing loosened.
import { getDocument, GlobalWorkerOptions, TextLayer, type PDFDocumentProxy } from 'pdfjs-dist';
import workerUrl from 'pdfjs-dist/build/pdf.worker.min.mjs?url';

GlobalWorkerOptions.workerSrc = workerUrl;

/** Open a PDF from its bytes, without eval (the CSP forbids it) and without fetching anything else. */
export function openPdf(data: ArrayBuffer): Promise<PDFDocumentProxy> {
  return getDocument({
    data: new Uint8Array(data),
    isEvalSupported: false,
    // Fonts a PDF only names (Helvetica, ...) come from the system, not from a font data URL.
    useSystemFonts: true,
    enableXfa: false,
  }).promise;
}

export { TextLayer };
export type { PDFDocumentProxy };
