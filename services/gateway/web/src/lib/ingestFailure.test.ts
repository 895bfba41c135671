import { describe, expect, it } from 'vitest';
import { dictionaries, translate } from '../i18n';
import { ingestFailure } from './ingestFailure';

const vi = (key: string, vars?: Record<string, string | number>) => translate('vi', key, vars);
const en = (key: string, vars?: Record<string, string | number>) => translate('en', key, vars);

describe('ingestFailure', () => {
  it('says a named reason with its values in the UI language', () => {
    const file = { error: 'the PDF is encrypted with a password; upload an unprotected copy', error_reason: 'PDF_ENCRYPTED' };
    expect(ingestFailure(file, vi)).toMatch(/mật khẩu/);
    expect(ingestFailure(file, vi)).not.toMatch(/encrypted/);
    expect(ingestFailure(file, en)).toMatch(/password/);
    const slow = { error: 'parsing took longer than 120 s', error_reason: 'PARSE_TIMEOUT', error_args: { seconds: '120' } };
    expect(ingestFailure(slow, vi)).toContain('120');
  });

  it('keeps the stored text for an unknown or missing reason', () => {
    expect(ingestFailure({ error: 'old failure', error_reason: '' }, vi)).toBe('old failure');
    expect(ingestFailure({ error: 'newer failure', error_reason: 'SOMETHING_NEW' }, vi)).toBe('newer failure');
  });

  it('has every reason in both languages', () => {
    const keys = Object.keys(dictionaries.vi).filter((k) => k.startsWith('ingest.'));
    expect(keys.length).toBeGreaterThan(10);
    for (const key of keys) expect(dictionaries.en[key as keyof typeof dictionaries.en]).toBeTruthy();
  });
});
