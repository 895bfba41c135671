"""Receiving one upload: size cap while streaming, type by content, durable blob, row before ack."""

from __future__ import annotations

import asyncio
import unicodedata
import uuid
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
from studyassist.core.errors import FailedPrecondition, InvalidArgument, NotFound
from studyassist.storage.v1 import storage_pb2

from storage.blobs import BlobStore, TempBlob
from storage.db import Connection, Database
from storage.sniff import TextValidator, early_kind, office_kind, text_kind

MAX_CHUNK_BYTES = 1024 * 1024
SNIFF_BYTES = 8192
WRITE_AHEAD_CHUNKS = 4
# Kept in a name although Unicode calls them format characters: the joiners that emoji sequences and
# some scripts need (they reorder nothing).
_KEPT_FORMAT = frozenset("\u200c\u200d")


def _shown_as_is(ch: str) -> bool:
    # Control characters (C0, DEL, C1), line and paragraph separators, and format characters: the
    # bidirectional overrides, embeddings, isolates and marks among them make "invoice\u202etxt.exe"
    # show as "invoiceexe.txt"; zero-width spaces and the BOM hide a name's real spelling.
    return ch in _KEPT_FORMAT or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")


def clean_file_name(raw: str) -> str:
    """The user's name, kept as metadata only: last path part, shown as it reads (no control, bidi or
    other invisible format characters), bounded."""
    last = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in last if _shown_as_is(ch)).strip()
    return name[:255] or "untitled"


def _discard_created(creating: Future[TempBlob]) -> None:
    if not creating.cancelled() and creating.exception() is None:
        creating.result().discard()


@dataclass(slots=True)
class Received:
    temp: TempBlob
    sha256: str
    size: int
    kind: storage_pb2.FileKind
    file_name: str


async def receive(requests: AsyncIterator[storage_pb2.UploadFileRequest], blobs: BlobStore, max_bytes: int) -> Received:
    """Stream the upload to a temp blob (fsynced), checking size and type as the bytes arrive."""
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("part") != "metadata":
        raise InvalidArgument("the first upload message must carry the file's metadata")
    metadata = first.metadata
    file_name = clean_file_name(metadata.file_name)  # (its suffix decides Markdown: the name as shown)
    # One writer thread per upload: the chunks must reach the file and the hash in order, which a
    # shared pool does not promise. Text is checked on a second thread, in order too: hashing (it
    # releases the GIL) and the UTF-8 check (it holds it) then run at once, on two cores, instead of
    # one after the other (on one core they held text uploads to about the hash's own speed).
    # A third thread hands written bytes to the disk as the file grows (TempBlob's flusher).
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-writer")
    checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-text-check")
    flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-flush")
    threads = (writer, checker, flusher)
    loop = asyncio.get_running_loop()
    creating = writer.submit(blobs.new_temp, flusher)
    try:
        temp = await asyncio.wrap_future(creating)
    except BaseException:
        # Cancelled (the caller's body broke off) while the writer was creating the file: the thread
        # goes on and creates it. Queued behind that, the discard removes it (a 0-byte leftover
        # otherwise, one per such call).
        writer.submit(_discard_created, creating)
        for thread in threads:
            thread.shutdown(wait=False)
        raise
    head = b""
    family = ""
    text = TextValidator()
    # Chunks handed to the threads and not yet written (and checked): the network runs ahead of the
    # disk, hash and text work by a few MiB at most (never the whole file), which evens out their
    # uneven pace.
    pending: deque[asyncio.Future[Any]] = deque()
    received = 0
    try:
        async for message in requests:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument("only the first upload message may carry metadata")
            data = message.chunk
            if len(data) > MAX_CHUNK_BYTES:
                raise InvalidArgument(f"upload chunks must be at most {MAX_CHUNK_BYTES} bytes")
            if received + len(data) > max_bytes:
                raise InvalidArgument(f"the file is larger than the upload limit of {max_bytes} bytes")
            if not family:
                head += data[: SNIFF_BYTES - len(head)]
                if len(head) >= SNIFF_BYTES:
                    family = early_kind(head)
            while len(pending) >= WRITE_AHEAD_CHUNKS:
                await pending.popleft()
                if family == "text" and not text.ok:
                    raise InvalidArgument("unsupported file type: the content is not UTF-8 text")
            written = loop.run_in_executor(writer, temp.write, data)
            if family in ("", "text"):
                pending.append(asyncio.gather(written, loop.run_in_executor(checker, text.feed, data)))
            else:
                pending.append(written)
            received += len(data)
        while pending:
            await pending.popleft()
        if temp.size == 0:
            raise InvalidArgument("the file is empty")
        if not family:
            family = early_kind(head)
        if family == "text" and not text.feed(b"", final=True):
            raise InvalidArgument("unsupported file type: the content is not UTF-8 text")
        sha256 = await loop.run_in_executor(writer, temp.finish)
        if family == "pdf":
            kind = storage_pb2.FILE_KIND_PDF
        elif family == "zip":
            kind = await asyncio.to_thread(office_kind, temp.path)
        else:
            kind = text_kind(file_name, metadata.content_type)
    except BaseException:
        for write in pending:
            write.cancel()  # those not started yet never start
        await asyncio.gather(*pending, return_exceptions=True)  # (their outcome is moot; collect it)
        # Queued on the writer, the discard runs after a write still running, even when this call was
        # cancelled mid-write.
        await asyncio.wrap_future(writer.submit(temp.discard))
        raise
    finally:
        for thread in threads:
            thread.shutdown(wait=False)
    return Received(temp, sha256, temp.size, kind, file_name)


@dataclass(frozen=True, slots=True)
class Quota:
    """What one student may keep: live files' total bytes and their number (USER_QUOTA_*)."""

    max_bytes: int
    max_files: int


async def _check_quota(conn: Connection, user_id: uuid.UUID, size: int, quota: Quota | None) -> None:
    """Refuse a new live file past the student's quota (FAILED_PRECONDITION: waiting does not help,
    deleting files does). Inside the storing transaction, after locking the user's row, so two
    uploads at once cannot both take the last place."""
    if quota is None:
        return
    await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
    row = await conn.fetchrow(
        "SELECT count(*) AS files, coalesce(sum(d.size_bytes), 0)::bigint AS used FROM uploaded_files f "
        "JOIN documents d ON d.id = f.document_id WHERE f.user_id = $1 AND f.deleted_at IS NULL",
        user_id,
    )
    assert row is not None  # (an aggregate always answers one row)
    files: int = row["files"]
    used: int = row["used"]
    if files + 1 > quota.max_files:
        raise FailedPrecondition(
            f"you already keep {files} files, the quota of {quota.max_files}; delete some to upload more",
            reason="QUOTA_FILES",
            args={"limit": quota.max_files, "used": files},
        )
    if used + size > quota.max_bytes:
        raise FailedPrecondition(
            f"this file ({size} bytes) would take your files to {used + size} bytes, over your quota of "
            f"{quota.max_bytes} bytes; delete some to upload more",
            reason="QUOTA_BYTES",
            args={"limit": quota.max_bytes, "limit_mb": f"{quota.max_bytes / 1_000_000:g}", "used": used, "size": size},
        )


@dataclass(frozen=True, slots=True)
class Stored:
    file_id: uuid.UUID
    # The caller already had these bytes as a live file and ``file_id`` is that file: the client
    # says "merged" instead of showing what looks like a second copy.
    merged: bool = False


async def store(
    db: Database, blobs: BlobStore, user_id: uuid.UUID, received: Received, quota: Quota | None = None
) -> Stored:
    """Commit the blob and its rows; returns the live file. Same user + same bytes: no new work.

    A new live file must fit in ``quota`` (the same bytes merged into a live file take nothing more)."""
    try:
        async with db.connection() as conn:
            for _ in range(3):  # a concurrent upload of the same bytes can win a race; look again
                async with conn.transaction():
                    existing = await conn.fetchrow(
                        "SELECT id FROM documents WHERE user_id = $1 AND sha256 = $2", user_id, received.sha256
                    )
                    if existing is None:
                        await _check_quota(conn, user_id, received.size, quota)
                        document_id = uuid.uuid4()
                        blob_name = f"{document_id.hex[:2]}/{document_id.hex}"
                        inserted = await conn.fetchval(
                            "INSERT INTO documents (id, user_id, sha256, kind, size_bytes, blob_name, status) "
                            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, sha256) DO NOTHING "
                            "RETURNING id",
                            document_id,
                            user_id,
                            received.sha256,
                            received.kind,
                            received.size,
                            blob_name,
                            storage_pb2.FILE_STATUS_QUEUED,
                        )
                        if inserted is None:
                            continue
                        # Durable name before the row commits: a crash here leaves an orphan blob, never a
                        # row without its bytes.
                        await asyncio.to_thread(blobs.commit, received.temp, blob_name)
                        await conn.execute(
                            "INSERT INTO ingestion_jobs (id, document_id) VALUES ($1, $2)", uuid.uuid4(), document_id
                        )
                        file_id = uuid.uuid4()
                        await conn.execute(
                            "INSERT INTO uploaded_files (id, user_id, document_id, file_name) VALUES ($1, $2, $3, $4)",
                            file_id,
                            user_id,
                            document_id,
                            received.file_name,
                        )
                        return Stored(file_id)
                    live = await conn.fetchval(
                        "SELECT id FROM uploaded_files WHERE document_id = $1 AND deleted_at IS NULL", existing["id"]
                    )
                    if live is not None:
                        return Stored(uuid.UUID(str(live)), merged=True)
                    await _check_quota(conn, user_id, received.size, quota)
                    file_id = uuid.uuid4()
                    inserted = await conn.fetchval(
                        "INSERT INTO uploaded_files (id, user_id, document_id, file_name) VALUES ($1, $2, $3, $4) "
                        "ON CONFLICT (document_id) WHERE deleted_at IS NULL DO NOTHING RETURNING id",
                        file_id,
                        user_id,
                        existing["id"],
                        received.file_name,
                    )
                    if inserted is not None:
                        return Stored(file_id)
            raise InvalidArgument("the same file is being uploaded concurrently; try again")
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("user not found") from None
    finally:
        await asyncio.to_thread(received.temp.discard)  # no-op once committed (the temp name is gone)
