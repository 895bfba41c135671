import type { ApiClient } from './client';
import { ApiError, errorFromResponse } from './errors';
import { formatBytes } from '../lib/format';
import type { GatewayConfig, StoredFile } from './types';

export const ACCEPTED_EXTENSIONS = ['.pdf', '.docx', '.pptx', '.txt', '.md'];
// The gateway's default UPLOAD_MAX_BYTES, used only until GET /v1/config says what this server
// accepts; the server's 413 stays the final word.
export const DEFAULT_UPLOAD_MAX_BYTES = 50_000_000;

export type UploadCheck = 'ok' | 'tooLarge' | 'wrongType' | 'empty';

/** The upload cap to check against: the server's, once known. */
export function uploadLimit(config: Pick<GatewayConfig, 'upload_max_bytes'> | null | undefined): number {
  const limit = Number(config?.upload_max_bytes);
  return Number.isFinite(limit) && limit > 0 ? limit : DEFAULT_UPLOAD_MAX_BYTES;
}

/** What can be said about a file before sending it. */
export function checkUpload(name: string, size: number, maxBytes: number): UploadCheck {
  const lower = name.toLowerCase();
  if (!ACCEPTED_EXTENSIONS.some((ext) => lower.endsWith(ext))) return 'wrongType';
  if (size === 0) return 'empty';
  if (size > maxBytes) return 'tooLarge';
  return 'ok';
}

const REJECTION_KEYS: Record<Exclude<UploadCheck, 'ok'>, string> = {
  tooLarge: 'docs.rejectedSize',
  empty: 'docs.rejectedEmpty',
  wrongType: 'docs.rejectedType',
};

/** Split picked files into those to send and one clear sentence for each refused one. */
export function triageUploads<F extends { name: string; size: number }>(
  files: readonly F[],
  maxBytes: number,
  t: (key: string, vars?: Record<string, string | number>) => string,
): { accepted: F[]; rejected: string[] } {
  const accepted: F[] = [];
  const rejected: string[] = [];
  for (const file of files) {
    const check = checkUpload(file.name, file.size, maxBytes);
    if (check === 'ok') accepted.push(file);
    else rejected.push(t(REJECTION_KEYS[check], { name: file.name, size: formatBytes(maxBytes) }));
  }
  return { accepted, rejected };
}

export interface UploadHandle {
  promise: Promise<StoredFile>;
  abort: () => void;
}

/** POST the raw file with XMLHttpRequest, the only browser API that reports upload progress. */
export function uploadFile(client: ApiClient, file: File, onProgress: (fraction: number) => void): UploadHandle {
  let xhr: XMLHttpRequest | null = null;
  let aborted = false;
  const send = () =>
    new Promise<StoredFile>((resolve, reject) => {
      const request = new XMLHttpRequest();
      xhr = request;
      request.open('POST', client.url('/v1/files', { file_name: file.name }));
      request.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
      request.setRequestHeader('Accept', 'application/json');
      if (client.accessToken) request.setRequestHeader('Authorization', `Bearer ${client.accessToken}`);
      request.upload.onprogress = (event) => {
        if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
      };
      request.onload = () => {
        if (request.status >= 200 && request.status < 300) {
          try {
            resolve(JSON.parse(request.responseText) as StoredFile);
          } catch {
            reject(new ApiError('http', request.status, 'BAD_RESPONSE', 'bad upload response'));
          }
          return;
        }
        reject(errorFromResponse(request.status, request.responseText, { get: (name) => request.getResponseHeader(name) }));
      };
      request.onerror = () => reject(new ApiError('network', 0, 'NETWORK', 'upload failed'));
      request.onabort = () => reject(new DOMException('upload cancelled', 'AbortError'));
      request.send(file);
    });
  const promise = (async () => {
    try {
      return await send();
    } catch (error) {
      if (!aborted && error instanceof ApiError && error.status === 401 && (await client.refresh())) {
        onProgress(0);
        return await send();
      }
      throw error;
    }
  })();
  return {
    promise,
    abort: () => {
      aborted = true;
      (xhr as XMLHttpRequest | null)?.abort();
    },
  };
}
