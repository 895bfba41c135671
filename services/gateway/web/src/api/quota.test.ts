import { describe, expect, it } from 'vitest';
import { translate } from '../i18n';
import { ApiError, describeError } from './errors';

// An upload refused by the student's quota (storage's QUOTA_BYTES / QUOTA_FILES): the documents page
// shows it through describeError in the upload's banner, with the quota, in either language.
describe('quota refusals', () => {
  const bytes = new ApiError('http', 413, 'FAILED_PRECONDITION', 'over your quota of 1500000 bytes', 'r1', null, 'QUOTA_BYTES', {
    limit: '1500000',
    limit_mb: '1.5',
    used: '1000000',
    size: '600000',
  });
  const files = new ApiError('http', 403, 'FAILED_PRECONDITION', 'the quota of 2', 'r2', null, 'QUOTA_FILES', { limit: '2', used: '2' });

  it('says the byte quota', () => {
    expect(describeError(bytes, (k, v) => translate('en', k, v))).toBe(
      'This upload would take your files past your storage quota of 1.5 MB. Delete some files to upload more.',
    );
    expect(describeError(bytes, (k, v) => translate('vi', k, v))).toContain('1.5 MB');
  });

  it('says the file quota', () => {
    expect(describeError(files, (k, v) => translate('en', k, v))).toBe('You keep 2 files, your quota of 2. Delete some files to upload more.');
    expect(describeError(files, (k, v) => translate('vi', k, v))).toContain('hạn mức 2 tệp');
  });
});
