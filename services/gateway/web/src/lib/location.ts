// Where in a file a passage is, said the way the file's format counts: a PDF has pages, a PPTX
// slides, a DOCX or Markdown file headings; a plain text file only the passage's place in order.
// What the storage parser records (services/storage/parse_worker.py): PDF page = page number, no
// heading; PPTX page = slide number, heading = slide title; DOCX and Markdown page 0, heading = the
// heading path ("Chương 1 > Ngăn xếp"); TXT neither.

export type FileFormat = 'pdf' | 'pptx' | 'docx' | 'md' | 'txt' | '';

const BY_KIND: Record<string, FileFormat> = {
  FILE_KIND_PDF: 'pdf',
  FILE_KIND_PPTX: 'pptx',
  FILE_KIND_DOCX: 'docx',
  FILE_KIND_MD: 'md',
  FILE_KIND_TXT: 'txt',
};

const BY_EXTENSION: Record<string, FileFormat> = {
  pdf: 'pdf',
  pptx: 'pptx',
  docx: 'docx',
  md: 'md',
  markdown: 'md',
  txt: 'txt',
};

const BY_MIME: Record<string, FileFormat> = {
  'application/pdf': 'pdf',
  'application/vnd.openxmlformats-officedocument.presentationml.presentation': 'pptx',
  'application/vnd.openxmlformats-officedocument.wordprocessingml.document': 'docx',
  'text/markdown': 'md',
  'text/plain': 'txt',
};

/** The format from what is known of the file: its kind (from storage), else its name's extension or a media type. */
export function fileFormat(hint: { kind?: string; file_name?: string; mime?: string }): FileFormat {
  if (hint.kind && BY_KIND[hint.kind]) return BY_KIND[hint.kind];
  const extension = /\.([a-z0-9]+)$/i.exec(hint.file_name ?? '')?.[1]?.toLowerCase() ?? '';
  if (BY_EXTENSION[extension]) return BY_EXTENSION[extension];
  const mime = (hint.mime ?? '').split(';')[0].trim().toLowerCase();
  return BY_MIME[mime] ?? '';
}

export interface PassagePlace {
  page?: number;
  heading?: string;
}

type Translate = (key: string, vars?: Record<string, string | number>) => string;

/** "slide 5" / "trang chiếu 5", "page 2" / "trang 2", or the heading path; "" when nothing is known. */
export function locationLabel(format: FileFormat, place: PassagePlace, t: Translate): string {
  const page = place.page && place.page > 0 ? place.page : 0;
  const heading = (place.heading ?? '').trim();
  if (format === 'pptx') return page ? t('loc.slide', { n: page }) : heading;
  if (format === 'pdf' || (format === '' && page)) return page ? t('loc.page', { n: page }) : heading;
  return heading;
}

/** The word the full label uses for the number ("Trang", "Trang chiếu"), or "" when the format has no pages. */
export function pageWordFor(format: FileFormat): 'cite.pageFull' | 'loc.slideWord' | '' {
  if (format === 'pptx') return 'loc.slideWord';
  if (format === 'pdf' || format === '') return 'cite.pageFull';
  return '';
}
