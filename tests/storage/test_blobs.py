"""The blob store's temp files: hashed as written, handed to the disk while they grow, and a failed
background flush fails the upload instead of passing unnoticed."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from storage.blobs import WRITEBACK_BYTES, BlobStore

MiB = 1024 * 1024


class CountingFlusher(ThreadPoolExecutor):
    """A real one-thread executor that notes what it is asked to run."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.calls: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls.append(getattr(fn, "__name__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


def store(tmp_path: Path) -> BlobStore:
    blobs = BlobStore(tmp_path / "blobs")
    blobs.prepare()
    return blobs


def test_a_growing_file_is_flushed_in_the_background_and_finishes_whole(tmp_path: Path) -> None:
    flusher = CountingFlusher()
    temp = store(tmp_path).new_temp(flusher)
    data = os.urandom(3 * WRITEBACK_BYTES + MiB)
    for start in range(0, len(data), MiB):
        temp.write(data[start : start + MiB])
    digest = temp.finish()
    flusher.shutdown()
    assert digest == hashlib.sha256(data).hexdigest()
    assert temp.path.read_bytes() == data
    assert flusher.calls and set(flusher.calls) == {"fdatasync"}
    assert len(flusher.calls) <= 3  # one per WRITEBACK_BYTES at most, never one per write


def test_a_failed_background_flush_fails_the_file(tmp_path: Path) -> None:
    class FailingFlusher(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            def broken_disk(*_: Any) -> None:
                raise OSError(errno.EIO, "Input/output error")

            return super().submit(broken_disk, *args)

    flusher = FailingFlusher(max_workers=1)
    temp = store(tmp_path).new_temp(flusher)
    for _ in range(WRITEBACK_BYTES // MiB + 1):
        temp.write(b"x" * MiB)
    with pytest.raises(OSError) as failed:
        temp.finish()
    assert failed.value.errno == errno.EIO
    temp.discard()
    flusher.shutdown()
    assert not temp.path.exists()


def test_discard_waits_for_a_flush_in_progress(tmp_path: Path) -> None:
    release = threading.Event()
    flushed = threading.Event()

    class SlowFlusher(ThreadPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            def slow(descriptor: int) -> None:
                release.wait(5)
                os.fstat(descriptor)  # the descriptor is still this file's: not closed under it
                flushed.set()

            return super().submit(slow, *args)

    flusher = SlowFlusher(max_workers=1)
    temp = store(tmp_path).new_temp(flusher)
    for _ in range(WRITEBACK_BYTES // MiB):
        temp.write(b"y" * MiB)
    threading.Timer(0.2, release.set).start()
    temp.discard()
    assert flushed.is_set() and not temp.path.exists()
    flusher.shutdown()
