"""Durable ingestion: jobs in PostgreSQL, claimed with SKIP LOCKED and a lease, parsed in a child
process, embedded in batches, stored idempotently; retried with backoff, failed with a reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from studyassist.core.errors import Unavailable
from studyassist.storage.v1 import storage_pb2

from storage.blobs import BlobStore
from storage.db import Database
from storage.embeddings import EmbeddingClient, EmbeddingError
from storage.textfold import fold

log = logging.getLogger(__name__)

KIND_NAMES = {
    storage_pb2.FILE_KIND_PDF: "pdf",
    storage_pb2.FILE_KIND_DOCX: "docx",
    storage_pb2.FILE_KIND_PPTX: "pptx",
    storage_pb2.FILE_KIND_TXT: "txt",
    storage_pb2.FILE_KIND_MD: "md",
}
EMBED_BATCH = 32
# Worth another try later: the embedding service or the database was away or overloaded.
TRANSIENT_ERRORS = (
    grpc.aio.AioRpcError,
    EmbeddingError,
    Unavailable,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
MAX_BACKOFF_S = 300.0


class PermanentFailure(Exception):
    """The document itself is unusable: retrying cannot help. The message is for the student."""


class ParserCrashed(PermanentFailure):
    """The parser died on a signal: likely the document, possibly the machine; worth one more try."""


@dataclass(frozen=True, slots=True)
class IngestSettings:
    workers: int
    max_attempts: int
    lease_s: float
    chunk_tokens: int
    overlap_tokens: int
    tokenizer_dir: str
    embedding_dim: int
    parse_memory_limit_mb: int
    parse_timeout_s: float


@dataclass(slots=True)
class Job:
    id: uuid.UUID
    document_id: uuid.UUID
    attempts: int
    last_error: str


async def parse_in_child(path: str, kind: str, settings: IngestSettings, chunk_tokens: int) -> list[dict[str, Any]]:
    """Parse and chunk one blob in a child process under memory and time limits."""
    request = {
        "path": path,
        "kind": kind,
        "tokenizer_dir": settings.tokenizer_dir,
        "chunk_tokens": chunk_tokens,
        "overlap_tokens": min(settings.overlap_tokens, chunk_tokens // 2),
        "memory_limit_mb": settings.parse_memory_limit_mb,
    }
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    # The request travels as an argument; the child is started by subprocess (vfork + exec) from a
    # worker thread: a plain fork() of this process runs gRPC's fork handlers in the child, which
    # crashes it now and then while other threads are inside gRPC.
    args = [sys.executable, "-m", "storage.parse_worker", json.dumps(request)]
    code, out, err = await asyncio.to_thread(_run_child, args, env, settings.parse_timeout_s)
    if code is None:
        raise PermanentFailure(f"parsing took longer than {settings.parse_timeout_s:g} s")
    if code != 0:
        tail = err.decode(errors="replace")[-500:]
        log.warning("parser exited", extra={"fields": {"returncode": code, "stderr": tail}})
        if code < 0:
            raise ParserCrashed(
                f"the parser stopped on signal {-code} (the document may need more than "
                f"{settings.parse_memory_limit_mb} MiB to parse)"
            )
        if "MemoryError" in tail:
            raise PermanentFailure(
                f"the document needs more than {settings.parse_memory_limit_mb} MiB or too much time to parse"
            )
        raise PermanentFailure("the document could not be parsed (the parser failed)")
    try:
        result = json.loads(out)
    except ValueError:
        raise PermanentFailure("the document could not be parsed (no parser result)") from None
    if error := result.get("error"):
        raise PermanentFailure(str(error))
    chunks: list[dict[str, Any]] = result["chunks"]
    return chunks


def _run_child(args: list[str], env: dict[str, str], timeout_s: float) -> tuple[int | None, bytes, bytes]:
    """Run the parser; (exit code, stdout, stderr), exit code None when it ran out of time."""
    with subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return None, b"", b""
        return process.returncode, out, err


class Ingestor:
    def __init__(self, db: Database, blobs: BlobStore, embeddings: EmbeddingClient, settings: IngestSettings) -> None:
        self.db = db
        self.blobs = blobs
        self.embeddings = embeddings
        self.settings = settings
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Bumped on every progress change, so WatchFile wakes at once instead of polling slowly.
        self.progress = asyncio.Condition()

    def start(self) -> None:
        for number in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"ingest-worker-{number}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def wake(self) -> None:
        self._wake.set()

    async def _notify(self) -> None:
        async with self.progress:
            self.progress.notify_all()

    async def _worker(self) -> None:
        while True:
            try:
                job = await self.claim()
            except (Unavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("cannot claim ingestion jobs", extra={"fields": {"error": str(exc)}})
                job = None
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                continue
            try:
                await self.process(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ingestion job crashed", extra={"fields": {"job_id": str(job.id)}})

    async def claim(self) -> Job | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                """
                WITH next AS (
                    SELECT id FROM ingestion_jobs
                    WHERE (status = 'queued' AND run_after <= now())
                       OR (status = 'processing' AND lease_until < now())
                    ORDER BY run_after
                    LIMIT 1
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE ingestion_jobs j
                SET status = 'processing', attempts = j.attempts + 1,
                    lease_until = now() + make_interval(secs => $1), updated_at = now()
                FROM next WHERE j.id = next.id
                RETURNING j.id, j.document_id, j.attempts, j.last_error
                """,
                self.settings.lease_s,
            )
        if row is None:
            return None
        return Job(row["id"], row["document_id"], row["attempts"], row["last_error"])

    async def process(self, job: Job) -> None:
        if job.attempts > self.settings.max_attempts:
            # Workers kept dying on it (or kept failing): stop trying.
            reason = f"gave up after {job.attempts - 1} attempts: {job.last_error or 'the worker stopped'}"
            await self._fail(job, reason)
            return
        # The lease is renewed while this worker lives, however long parsing or embedding takes;
        # if the process dies, renewals stop and another worker takes the job when it runs out.
        heartbeat = asyncio.create_task(self._renew_lease(job))
        try:
            await self._ingest(job)
        except ParserCrashed as exc:
            if job.attempts >= min(2, self.settings.max_attempts):
                await self._fail(job, str(exc))
            else:
                await self._retry(job, str(exc))
        except PermanentFailure as exc:
            await self._fail(job, str(exc))
        except TRANSIENT_ERRORS as exc:
            reason = _transient_reason(exc)
            if job.attempts >= self.settings.max_attempts:
                await self._fail(job, f"gave up after {job.attempts} attempts: {reason}")
            else:
                await self._retry(job, reason)
        finally:
            heartbeat.cancel()

    async def _renew_lease(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                async with self.db.connection() as conn:
                    await conn.execute(
                        "UPDATE ingestion_jobs SET lease_until = now() + make_interval(secs => $3) "
                        "WHERE id = $1 AND attempts = $2 AND status = 'processing'",
                        job.id,
                        job.attempts,
                        self.settings.lease_s,
                    )

    async def _ingest(self, job: Job) -> None:
        async with self.db.connection() as conn:
            doc = await conn.fetchrow(
                "UPDATE documents SET status = $2, updated_at = now() WHERE id = $1 RETURNING user_id, kind, blob_name",
                job.document_id,
                storage_pb2.FILE_STATUS_PROCESSING,
            )
        if doc is None:
            return
        await self._notify()
        info = await self.embeddings.info()
        if info.dimension != self.settings.embedding_dim:
            raise PermanentFailure(
                f"the embedding model {info.model_id} has dimension {info.dimension}, "
                f"the database stores {self.settings.embedding_dim} (set EMBEDDING_DIM)"
            )
        chunk_tokens = self.settings.chunk_tokens
        if info.max_tokens > 2:
            chunk_tokens = min(chunk_tokens, info.max_tokens - 2)  # room for [CLS] and [SEP]
        path = str(self.blobs.path(doc["blob_name"]))
        chunks = await parse_in_child(path, KIND_NAMES[doc["kind"]], self.settings, chunk_tokens)
        async with self.db.connection() as conn:
            done_rows = await conn.fetch(
                "SELECT chunk_index FROM chunks WHERE document_id = $1 AND model = $2", job.document_id, info.model_id
            )
            await conn.execute(
                "UPDATE documents SET chunks_total = $2, chunks_done = $3, updated_at = now() WHERE id = $1",
                job.document_id,
                len(chunks),
                len(done_rows),
            )
        await self._notify()
        done = {r["chunk_index"] for r in done_rows}
        todo = [i for i in range(len(chunks)) if i not in done]
        for start in range(0, len(todo), EMBED_BATCH):
            batch = todo[start : start + EMBED_BATCH]
            vectors, model_id = await self.embeddings.embed([chunks[i]["text"] for i in batch])
            rows = [
                (
                    uuid.uuid4(),
                    job.document_id,
                    doc["user_id"],
                    index,
                    model_id,
                    chunks[index]["text"],
                    fold(chunks[index]["text"]),
                    int(chunks[index]["page"]),
                    chunks[index]["heading"],
                    int(chunks[index]["char_start"]),
                    int(chunks[index]["char_end"]),
                    vectors[row],
                )
                for row, index in enumerate(batch)
            ]
            async with self.db.connection() as conn, conn.transaction():
                await conn.executemany(
                    """
                    INSERT INTO chunks (id, document_id, user_id, chunk_index, model, text, text_folded,
                                        page, heading, char_start, char_end, embedding)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                    ON CONFLICT (document_id, chunk_index, model) DO NOTHING
                    """,
                    rows,
                )
                still_mine = await conn.fetchval(
                    "UPDATE ingestion_jobs SET lease_until = now() + make_interval(secs => $3), updated_at = now() "
                    "WHERE id = $1 AND attempts = $2 AND status = 'processing' RETURNING id",
                    job.id,
                    job.attempts,
                    self.settings.lease_s,
                )
                await conn.execute(
                    "UPDATE documents SET chunks_done = (SELECT count(*) FROM chunks WHERE document_id = $1 "
                    "AND model = $2), updated_at = now() WHERE id = $1",
                    job.document_id,
                    model_id,
                )
            await self._notify()
            if still_mine is None:
                return  # our lease ran out and another worker owns the job now
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE documents SET status = $2, error = '', chunks_done = chunks_total, updated_at = now() "
                "WHERE id = $1",
                job.document_id,
                storage_pb2.FILE_STATUS_READY,
            )
            await conn.execute(
                "UPDATE ingestion_jobs SET status = 'done', lease_until = NULL, last_error = '', updated_at = now() "
                "WHERE id = $1",
                job.id,
            )
        await self._notify()
        log.info("ingested", extra={"fields": {"document_id": str(job.document_id), "chunks": len(chunks)}})

    async def _fail(self, job: Job, reason: str) -> None:
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE documents SET status = $2, error = $3, updated_at = now() WHERE id = $1",
                job.document_id,
                storage_pb2.FILE_STATUS_FAILED,
                reason,
            )
            await conn.execute(
                "UPDATE ingestion_jobs SET status = 'failed', lease_until = NULL, last_error = $2, updated_at = now() "
                "WHERE id = $1",
                job.id,
                reason,
            )
        await self._notify()
        log.info("ingestion failed", extra={"fields": {"document_id": str(job.document_id), "reason": reason}})

    async def _retry(self, job: Job, reason: str) -> None:
        backoff = min(MAX_BACKOFF_S, 2.0**job.attempts)
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE ingestion_jobs SET status = 'queued', lease_until = NULL, last_error = $2, "
                "run_after = now() + make_interval(secs => $3), updated_at = now() WHERE id = $1",
                job.id,
                reason,
                backoff,
            )
            await conn.execute(
                "UPDATE documents SET status = $2, updated_at = now() WHERE id = $1",
                job.document_id,
                storage_pb2.FILE_STATUS_QUEUED,
            )
        await self._notify()
        log.warning("ingestion will retry", extra={"fields": {"job_id": str(job.id), "in_s": backoff, "why": reason}})


def _transient_reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"embedding service: {exc.code().name} {exc.details() or ''}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]
