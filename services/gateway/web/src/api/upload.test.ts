import { afterEach, describe, expect, it, vi } from 'vitest';
import { translate } from '../i18n';
import { ApiClient } from './client';
import { checkUpload, DEFAULT_UPLOAD_MAX_BYTES, triageUploads, uploadLimit } from './upload';

const t = (key: string, vars?: Record<string, string | number>) => translate('en', key, vars);

describe('upload limits', () => {
  it("uses the server's cap once known, its default until then", () => {
    expect(uploadLimit({ upload_max_bytes: 10_000_000 })).toBe(10_000_000);
    expect(uploadLimit(null)).toBe(DEFAULT_UPLOAD_MAX_BYTES);
    expect(uploadLimit({ upload_max_bytes: Number.NaN })).toBe(DEFAULT_UPLOAD_MAX_BYTES);
    expect(DEFAULT_UPLOAD_MAX_BYTES).toBe(50_000_000); // the gateway's UPLOAD_MAX_BYTES default
  });

  it('refuses a file over the cap before sending it, with a clear message', () => {
    const cap = 5 * 1024 * 1024;
    expect(checkUpload('notes.pdf', cap, cap)).toBe('ok');
    expect(checkUpload('notes.pdf', cap + 1, cap)).toBe('tooLarge');
    const { accepted, rejected } = triageUploads(
      [
        { name: 'big.pdf', size: cap + 1 },
        { name: 'ok.md', size: 10 },
        { name: 'empty.txt', size: 0 },
        { name: 'tool.exe', size: 10 },
      ],
      cap,
      t,
    );
    expect(accepted.map((f) => f.name)).toEqual(['ok.md']);
    expect(rejected).toEqual([
      'big.pdf: file too large (at most 5.0 MB).',
      'empty.txt: the file is empty.',
      'tool.exe: unsupported file type (only PDF, DOCX, PPTX, TXT, MD).',
    ]);
  });
});

describe('ApiClient.config', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('asks GET /v1/config once and again after a failure', async () => {
    const answers = [
      new Response('{"code":"UNAVAILABLE","message":"down","request_id":"r"}', { status: 503 }),
      new Response('{"upload_max_bytes":1234,"max_body_bytes":99,"is_admin":true}', { status: 200 }),
    ];
    const fetch = vi.fn(async () => answers.shift()!);
    vi.stubGlobal('fetch', fetch);
    const client = new ApiClient('http://gw');
    await expect(client.config()).rejects.toMatchObject({ status: 503 });
    const config = await client.config();
    expect(config).toEqual({ upload_max_bytes: 1234, max_body_bytes: 99, is_admin: true });
    expect(await client.config()).toBe(config);
    expect(fetch).toHaveBeenCalledTimes(2);
    expect(fetch.mock.calls[1]).toEqual(['http://gw/v1/config', expect.objectContaining({ method: 'GET' })]);
  });
});
