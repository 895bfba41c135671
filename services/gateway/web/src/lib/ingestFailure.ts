import type { StoredFile } from '../api/types';
import { dictionaries } from '../i18n';

type Translate = (key: string, vars?: Record<string, string | number>) => string;

/** Why a document failed, in the UI's language when storage named the reason (File.error_reason);
 * the English text storage wrote when it did not (failures recorded before reasons existed). */
export function ingestFailure(file: Pick<StoredFile, 'error' | 'error_reason' | 'error_args'>, t: Translate): string {
  const key = `ingest.${file.error_reason ?? ''}`;
  if (file.error_reason && /^[A-Z][A-Z0-9_]*$/.test(file.error_reason) && key in dictionaries.vi) {
    return t(key, file.error_args ?? {});
  }
  return file.error || t('ingest.UNREADABLE');
}
