"""The blob store: content under server-generated names, written durably before any row points at it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import time
import uuid
from concurrent.futures import Executor, Future
from pathlib import Path

log = logging.getLogger(__name__)

# A temp file nothing was written to for this long is an upload's leftover (a crash, a killed replica):
# the gateway gives an upload at most an hour in all (UPLOAD_TIMEOUT_S), and a live one touches its
# file with every chunk.
STALE_TEMP_S = 3600.0
# While an upload streams, its written bytes are handed to the disk every this many bytes (fdatasync
# on a side thread, the writer going on meanwhile), so the fsync that acknowledges the upload waits
# only for the tail instead of the whole file.
WRITEBACK_BYTES = 8 * 1024 * 1024


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def prepare(self, stale_s: float = STALE_TEMP_S) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.sweep(stale_s)

    def sweep(self, stale_s: float = STALE_TEMP_S) -> int:
        """Remove temp files of uploads a crash or a killed replica left behind; how many.

        Only those untouched for ``stale_s`` (no replica sharing this directory can still be
        writing them). Blocking: call from a thread.
        """
        cutoff = time.time() - stale_s
        removed = 0
        for leftover in self.tmp.glob("*.part"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
        return removed

    def path(self, blob_name: str) -> Path:
        return self.root / blob_name

    def new_temp(self, flusher: Executor | None = None) -> TempBlob:
        return TempBlob(self.tmp / f"{uuid.uuid4().hex}.part", flusher)

    def commit(self, temp: TempBlob, blob_name: str) -> Path:
        """Move a finished (fsynced) temp file to its final name and make the rename durable."""
        final = self.path(blob_name)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp.path, final)
        _fsync_dir(final.parent)
        return final


class TempSweeper:
    """Sweeps the blob store's abandoned temp files every ``interval_s`` while the service runs (a
    replica that lives for months would otherwise keep every leftover since its start)."""

    def __init__(self, blobs: BlobStore, *, interval_s: float, stale_s: float) -> None:
        self.blobs = blobs
        self.interval_s = interval_s
        self.stale_s = stale_s
        self.removed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="temp-blob-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                removed = await asyncio.to_thread(self.blobs.sweep, self.stale_s)
            except Exception:  # (the next round tries again; a sweep is never worth the service)
                log.exception("sweeping temp blobs failed")
                continue
            self.removed += removed
            if removed:
                log.info("removed abandoned temp blobs", extra={"fields": {"count": removed}})


class TempBlob:
    """A temp file being written, hashed as it goes. Blocking: call from one worker thread.

    With a ``flusher``, written bytes go to the disk in the background as the file grows.
    """

    def __init__(self, path: Path, flusher: Executor | None = None) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 (closed by finish/discard)
        self._hash = hashlib.sha256()
        self.size = 0
        self._flusher = flusher
        self._flushing: Future[None] | None = None
        self._unflushed = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        self._unflushed += len(data)
        if self._flusher is None or self._unflushed < WRITEBACK_BYTES:
            return
        if self._flushing is None or self._flushing.done():  # (never more than one at a time)
            self._check_flushed()
            self._unflushed = 0
            self._flushing = self._flusher.submit(os.fdatasync, self._file.fileno())

    def _check_flushed(self) -> None:
        # A background flush's error is the upload's: after a failed fdatasync Linux may report
        # nothing to the next fsync, though the data never reached the disk.
        if self._flushing is not None:
            flushing, self._flushing = self._flushing, None
            flushing.result()

    def finish(self) -> str:
        """Flush and fsync; returns the sha256 hex digest."""
        self._file.flush()
        self._check_flushed()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        if self._flushing is not None:
            concurrent.futures.wait([self._flushing])  # (it uses the file's descriptor)
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
