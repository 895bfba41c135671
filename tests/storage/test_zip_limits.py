"""ZIP packages that lie: too many parts (refused at upload, before zipfile reads them), sizes that lie."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from storage.parse_worker import MAX_ZIP_ENTRIES, ParseFailure, zip_directory_size
from storage.sniff import office_kind
from studyassist.core.errors import InvalidArgument
from studyassist.storage.v1 import storage_pb2

from tests.storage.conftest import StorageClient
from tests.storage.documents import (
    lying_size_docx,
    make_docx,
    many_parts_zip,
    with_declared_count,
    with_zip64_claim,
)


def peak_memory(action: Callable[[], object]) -> tuple[int, float]:
    """Peak Python allocations (bytes) and seconds of ``action``, which may raise."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        action()
    except Exception:  # the caller checks the outcome separately
        pass
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, elapsed


def test_end_records_are_read_as_zipfile_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "a.docx"
    path.write_bytes(make_docx([("p", "xin chào")]))
    entries, directory_bytes = zip_directory_size(str(path))
    assert entries == len(zipfile.ZipFile(path).infolist()) and 0 < directory_bytes < 4096
    # An archive comment, and ZIP64 end records (a real one: more than 65535 entries).
    commented = io.BytesIO()
    with zipfile.ZipFile(commented, "w") as archive:
        archive.writestr("a", b"x")
        archive.comment = b"notes " * 100
    path.write_bytes(commented.getvalue())
    assert zip_directory_size(str(path)) == (1, len(b"a") + 46)
    path.write_bytes(many_parts_zip(70_000))
    assert zip_directory_size(str(path))[0] == 70_000 + len(zipfile.ZipFile(io.BytesIO(make_docx([]))).infolist())
    path.write_bytes(b"PK\x03\x04 but no end record")
    with pytest.raises(ParseFailure, match="no end of central directory"):
        zip_directory_size(str(path))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: many_parts_zip(MAX_ZIP_ENTRIES + 100), f"parts \\(at most {MAX_ZIP_ENTRIES} allowed\\)"),
        # The end record says 10 parts; the central directory holds 20 000: zipfile would parse them all.
        (lambda: with_declared_count(many_parts_zip(20_000), 10), "table of 10 parts takes"),
        # ZIP64 end records claiming a billion parts in a terabyte of directory.
        (lambda: with_zip64_claim(make_docx([("p", "x")]), 10**9, 10**12), "1000000000 parts"),
    ],
)
def test_too_many_parts_refused_before_zipfile_reads_them(
    tmp_path: Path, make: Callable[[], bytes], reason: str
) -> None:
    path = tmp_path / "many.docx"
    path.write_bytes(make())
    with pytest.raises(InvalidArgument, match=reason):
        office_kind(path)
    peak, elapsed = peak_memory(lambda: office_kind(path))
    assert peak < 512 * 1024 and elapsed < 0.5, (peak, elapsed)


def test_what_the_check_saves(tmp_path: Path) -> None:
    # The lying count above, opened by zipfile itself: every listed part becomes an object in memory.
    path = tmp_path / "lie.docx"
    path.write_bytes(with_declared_count(many_parts_zip(20_000), 10))
    peak, _ = peak_memory(lambda: zipfile.ZipFile(path).namelist())
    assert peak > 4 * 1024 * 1024, peak


async def test_upload_with_too_many_parts_is_invalid_argument(storage: StorageClient) -> None:
    user = await storage.new_user()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await storage.upload(user, "slides.pptx", many_parts_zip(MAX_ZIP_ENTRIES + 1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_ZIP_ENTRIES} allowed" in (err.value.details() or "")
    # A normal package still goes through.
    ok = await storage.upload(user, "notes.docx", make_docx([("p", "Ghi chú môn học")]))
    assert ok.kind == storage_pb2.FILE_KIND_DOCX


async def test_part_larger_than_declared_fails_the_job_with_a_reason(storage: StorageClient) -> None:
    user = await storage.new_user()
    # 8 MiB of zeros declared as 64 KiB: no ratio or total check sees it before inflating.
    uploaded = await storage.upload(user, "notes.docx", lying_size_docx())
    assert uploaded.kind == storage_pb2.FILE_KIND_DOCX
    done = await storage.wait_done(user, uploaded.file_id)
    assert done.status == storage_pb2.FILE_STATUS_FAILED
    assert "'word/media/image1.bin' expands beyond its declared size" in done.error, done.error
