"""Durable ingestion: jobs in PostgreSQL, claimed with SKIP LOCKED and a lease, parsed in a child
process, embedded in batches, stored idempotently; retried with backoff, failed with a reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from studyassist.core.errors import Unavailable
from studyassist.storage.v1 import storage_pb2

from storage.blobs import BlobStore
from storage.bm25 import Postings, build_postings
from storage.db import Database
from storage.embeddings import EmbeddingClient, EmbeddingError
from storage.termindex import write_document_terms
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
# A job is this worker's while its claim stands: same attempt number, still processing. Every update
# of a job's outcome matches on it, so a worker whose lease ran out cannot overwrite the new owner's.
OWNED = "id = $1 AND attempts = $2 AND status = 'processing'"
# Job states as the ingestion.jobs gauge names them (the table's 'done' is the file's "ready").
JOB_STATES = {"queued": "queued", "processing": "processing", "done": "ready", "failed": "failed"}
# The gauge's counts are at most this old; a scrape never waits for the database.
JOB_COUNTS_MAX_AGE_S = 10.0


class PermanentFailure(Exception):
    """The document itself is unusable: retrying cannot help. The message is for the student;
    ``reason`` and ``args`` name it for a client to say in the student's language (File.error_reason)."""

    def __init__(self, message: str, reason: str = "UNREADABLE", args: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.reason_args = dict(args or {})


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
        raise PermanentFailure(
            f"parsing took longer than {settings.parse_timeout_s:g} s",
            "PARSE_TIMEOUT",
            {"seconds": f"{settings.parse_timeout_s:g}"},
        )
    if code != 0:
        tail = err.decode(errors="replace")[-500:]
        log.warning("parser exited", extra={"fields": {"returncode": code, "stderr": tail}})
        if code < 0:
            raise ParserCrashed(
                f"the parser stopped on signal {-code} (the document may need more than "
                f"{settings.parse_memory_limit_mb} MiB to parse)",
                "TOO_MUCH_MEMORY",
                {"mib": str(settings.parse_memory_limit_mb)},
            )
        if "MemoryError" in tail:
            raise PermanentFailure(
                f"the document needs more than {settings.parse_memory_limit_mb} MiB or too much time to parse",
                "TOO_MUCH_MEMORY",
                {"mib": str(settings.parse_memory_limit_mb)},
            )
        raise PermanentFailure("the document could not be parsed (the parser failed)", "PARSER_FAILED")
    try:
        result = json.loads(out)
    except ValueError:
        raise PermanentFailure("the document could not be parsed (no parser result)", "PARSER_FAILED") from None
    if error := result.get("error"):
        args = result.get("args")
        raise PermanentFailure(
            str(error),
            str(result.get("reason") or "UNREADABLE"),
            {str(k): str(v) for k, v in args.items()} if isinstance(args, dict) else None,
        )
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


class JobCounts:
    """Ingestion jobs by state for the ``ingestion.jobs`` gauge: counted at most every ``max_age_s``.

    The gauge's callback runs on the metric reader's thread and only reads the last counts; when they
    are older than ``max_age_s`` it asks the event loop for a fresh count (one at a time), so however
    often metrics are collected, the database sees at most one count query per ``max_age_s``.
    """

    def __init__(self, db: Database, loop: asyncio.AbstractEventLoop, max_age_s: float = JOB_COUNTS_MAX_AGE_S) -> None:
        self.db = db
        self.loop = loop
        self.max_age_s = max_age_s
        self.counts: dict[str, int] = {}
        self.counted_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def refresh(self) -> None:
        try:
            async with self.db.connection() as conn:
                rows = await conn.fetch("SELECT status, count(*) AS n FROM ingestion_jobs GROUP BY status")
        except (Unavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("cannot count ingestion jobs", extra={"fields": {"error": str(exc)}})
            return
        finally:
            self.counted_at = time.monotonic()  # a failed count waits its turn too
        counts = dict.fromkeys(JOB_STATES.values(), 0)
        for row in rows:
            state = JOB_STATES.get(row["status"], row["status"])
            counts[state] = counts.get(state, 0) + row["n"]
        self.counts = counts

    def _start_refresh(self) -> None:
        if not self._closed and (self._task is None or self._task.done()):
            self._task = self.loop.create_task(self.refresh(), name="ingestion-job-counts")

    def observe(self, _: CallbackOptions) -> Iterable[Observation]:
        if not self._closed and time.monotonic() - self.counted_at >= self.max_age_s:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self.loop.call_soon_threadsafe(self._start_refresh)
        return [Observation(count, {"state": state}) for state, count in self.counts.items()]

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


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
        self.job_counts: JobCounts | None = None

    def register_gauges(self, meter: metrics.Meter) -> None:
        """``ingestion.jobs`` by ``state`` (queued, processing, ready, failed), across all replicas."""
        self.job_counts = JobCounts(self.db, asyncio.get_running_loop())
        meter.create_observable_gauge(
            "ingestion.jobs", [self.job_counts.observe], description="Ingestion jobs by state (all replicas)"
        )

    def start(self) -> None:
        for number in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"ingest-worker-{number}"))

    async def stop(self) -> None:
        if self.job_counts is not None:
            await self.job_counts.close()
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
            await self._fail(job, reason, "GAVE_UP", {"attempts": str(job.attempts - 1)})
            return
        # The lease is renewed while this worker lives, however long parsing or embedding takes;
        # if the process dies, renewals stop and another worker takes the job when it runs out.
        heartbeat = asyncio.create_task(self._renew_lease(job))
        try:
            await self._ingest(job)
        except ParserCrashed as exc:
            if job.attempts >= min(2, self.settings.max_attempts):
                await self._fail(job, str(exc), exc.reason, exc.reason_args)
            else:
                await self._retry(job, str(exc))
        except PermanentFailure as exc:
            await self._fail(job, str(exc), exc.reason, exc.reason_args)
        except TRANSIENT_ERRORS as exc:
            reason = _transient_reason(exc)
            if job.attempts >= self.settings.max_attempts:
                await self._fail(
                    job, f"gave up after {job.attempts} attempts: {reason}", "GAVE_UP", {"attempts": str(job.attempts)}
                )
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
                        f"UPDATE ingestion_jobs SET lease_until = now() + make_interval(secs => $3) WHERE {OWNED}",
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
                f"the database stores {self.settings.embedding_dim} (set EMBEDDING_DIM)",
                "SERVER_MISCONFIGURED",
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
                    f"WHERE {OWNED} RETURNING id",
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
        # The BM25 index of the whole document, written with the status that makes it searchable.
        postings = await asyncio.to_thread(build_postings, [chunk["text"] for chunk in chunks])
        if await self._finish(job, postings):
            log.info("ingested", extra={"fields": {"document_id": str(job.document_id), "chunks": len(chunks)}})

    async def _finish(self, job: Job, postings: Postings) -> bool:
        """Mark the job done and its document ready with its term index, if this worker still owns the job."""
        async with self.db.connection() as conn, conn.transaction():
            owned = await conn.fetchval(
                "UPDATE ingestion_jobs SET status = 'done', lease_until = NULL, last_error = '', updated_at = now() "
                f"WHERE {OWNED} RETURNING id",
                job.id,
                job.attempts,
            )
            if owned is not None:
                await write_document_terms(conn, job.document_id, postings)
                await conn.execute(
                    "UPDATE documents SET status = $2, error = '', error_reason = '', error_args = '{}', "
                    "chunks_done = chunks_total, updated_at = now() "
                    "WHERE id = $1",
                    job.document_id,
                    storage_pb2.FILE_STATUS_READY,
                )
        return await self._after_update(job, owned is not None)

    async def _fail(self, job: Job, reason: str, code: str = "UNREADABLE", args: dict[str, str] | None = None) -> bool:
        async with self.db.connection() as conn, conn.transaction():
            owned = await conn.fetchval(
                "UPDATE ingestion_jobs SET status = 'failed', lease_until = NULL, last_error = $3, updated_at = now() "
                f"WHERE {OWNED} RETURNING id",
                job.id,
                job.attempts,
                reason,
            )
            if owned is not None:
                await conn.execute(
                    "UPDATE documents SET status = $2, error = $3, error_reason = $4, error_args = $5, "
                    "updated_at = now() WHERE id = $1",
                    job.document_id,
                    storage_pb2.FILE_STATUS_FAILED,
                    reason,
                    code,
                    json.dumps(args or {}, ensure_ascii=False),
                )
        if await self._after_update(job, owned is not None):
            log.info("ingestion failed", extra={"fields": {"document_id": str(job.document_id), "reason": reason}})
            return True
        return False

    async def _retry(self, job: Job, reason: str) -> bool:
        backoff = min(MAX_BACKOFF_S, 2.0**job.attempts)
        async with self.db.connection() as conn, conn.transaction():
            owned = await conn.fetchval(
                "UPDATE ingestion_jobs SET status = 'queued', lease_until = NULL, last_error = $3, "
                f"run_after = now() + make_interval(secs => $4), updated_at = now() WHERE {OWNED} RETURNING id",
                job.id,
                job.attempts,
                reason,
                backoff,
            )
            if owned is not None:
                await conn.execute(
                    "UPDATE documents SET status = $2, updated_at = now() WHERE id = $1",
                    job.document_id,
                    storage_pb2.FILE_STATUS_QUEUED,
                )
        if await self._after_update(job, owned is not None):
            log.warning(
                "ingestion will retry", extra={"fields": {"job_id": str(job.id), "in_s": backoff, "why": reason}}
            )
            return True
        return False

    async def _after_update(self, job: Job, owned: bool) -> bool:
        if owned:
            await self._notify()
        else:
            # Our lease ran out and another worker claimed the job (or it ended): its outcome stands.
            log.info("ingestion job taken over: result dropped", extra={"fields": {"job_id": str(job.id)}})
        return owned


def _transient_reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"embedding service: {exc.code().name} {exc.details() or ''}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]
