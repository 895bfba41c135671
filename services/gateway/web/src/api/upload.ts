import type { ApiClient } from './client';
import { ApiError, errorFromResponse } from './errors';
import type { StoredFile } from './types';

export const ACCEPTED_EXTENSIONS = ['.pdf', '.docx', '.pptx', '.txt', '.md'];
// The gateway's default upload limit (UPLOAD_MAX_BYTES); the server's 413 stays the final word.
export const MAX_UPLOAD_BYTES = 100 * 1024 * 1024;

export type UploadCheck = 'ok' | 'tooLarge' | 'wrongType' | 'empty';

/** What can be said about a file before sending it. */
export function checkUpload(name: string, size: number, maxBytes = MAX_UPLOAD_BYTES): UploadCheck {
  const lower = name.toLowerCase();
  if (!ACCEPTED_EXTENSIONS.some((ext) => lower.endsWith(ext))) return 'wrongType';
  if (size === 0) return 'empty';
  if (size > maxBytes) return 'tooLarge';
  return 'ok';
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
