"""Ingestion job bookkeeping against the real PostgreSQL: stale workers, and the jobs-by-state gauge."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from storage.blobs import BlobStore
from storage.bm25 import build_postings
from storage.db import Database, connect, migrate
from storage.embeddings import EmbeddingClient
from storage.ingest import Ingestor, IngestSettings, Job
from studyassist.core.telemetry import setup_telemetry
from studyassist.storage.v1 import storage_pb2


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await connect(database_url, min_size=1, max_size=3, acquire_timeout_s=5)
    await migrate(database, embedding_dim=384)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def ingestor(db: Database, tmp_path: Path) -> AsyncIterator[Ingestor]:
    embeddings = EmbeddingClient("127.0.0.1:9")  # never called here
    settings = IngestSettings(
        workers=0,
        max_attempts=5,
        lease_s=30.0,
        chunk_tokens=64,
        overlap_tokens=16,
        tokenizer_dir="",
        embedding_dim=384,
        parse_memory_limit_mb=256,
        parse_timeout_s=10.0,
    )
    worker = Ingestor(db, BlobStore(tmp_path / "blobs"), embeddings, settings)
    try:
        yield worker
    finally:
        await worker.stop()
        await embeddings.close()


async def add_job(db: Database, *, status: str = "processing", attempts: int = 1) -> Job:
    user_id, document_id, job_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'h')", user_id, f"{user_id}@ptit.edu.vn"
        )
        await conn.execute(
            "INSERT INTO documents (id, user_id, sha256, kind, size_bytes, blob_name, status) "
            "VALUES ($1, $2, $3, $4, 1, 'x', $5)",
            document_id,
            user_id,
            document_id.hex,
            storage_pb2.FILE_KIND_TXT,
            storage_pb2.FILE_STATUS_PROCESSING,
        )
        await conn.execute(
            "INSERT INTO ingestion_jobs (id, document_id, status, attempts, lease_until) "
            "VALUES ($1, $2, $3, $4, now() + interval '30 seconds')",
            job_id,
            document_id,
            status,
            attempts,
        )
    return Job(job_id, document_id, attempts, "")


async def state(db: Database, job: Job) -> tuple[object, ...]:
    async with db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT j.status, j.attempts, j.last_error, d.status AS document_status, d.error "
            "FROM ingestion_jobs j JOIN documents d ON d.id = j.document_id WHERE j.id = $1",
            job.id,
        )
    assert row is not None
    return tuple(row.values())


async def test_a_worker_whose_claim_was_taken_over_changes_nothing(db: Database, ingestor: Ingestor) -> None:
    # The job was claimed again (attempt 2) after this worker's lease (attempt 1) ran out.
    current = await add_job(db, attempts=2)
    stale = Job(current.id, current.document_id, 1, "")
    before = await state(db, current)
    assert await ingestor._fail(stale, "the parser failed") is False
    assert await ingestor._retry(stale, "embedding service: UNAVAILABLE") is False
    assert await ingestor._finish(stale, build_postings(["stale"])) is False
    assert await state(db, current) == before
    # The owner's outcome applies.
    assert await ingestor._finish(current, build_postings(["current"])) is True
    assert await state(db, current) == ("done", 2, "", storage_pb2.FILE_STATUS_READY, "")
    # Once the job has ended, a late failure from anyone leaves it as it is.
    assert await ingestor._fail(current, "late") is False
    assert (await state(db, current))[0] == "done"


async def test_the_owner_fails_and_retries(db: Database, ingestor: Ingestor) -> None:
    failing = await add_job(db)
    assert await ingestor._fail(failing, "the PDF is encrypted") is True
    assert await state(db, failing) == (
        "failed",
        1,
        "the PDF is encrypted",
        storage_pb2.FILE_STATUS_FAILED,
        "the PDF is encrypted",
    )
    retrying = await add_job(db)
    assert await ingestor._retry(retrying, "busy") is True
    assert (await state(db, retrying))[:4] == ("queued", 1, "busy", storage_pb2.FILE_STATUS_QUEUED)


def job_gauge(reader: InMemoryMetricReader) -> dict[str, int]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        str((point.attributes or {})["state"]): int(point.value)  # type: ignore[union-attr]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "ingestion.jobs"
        for point in metric.data.data_points  # type: ignore[union-attr]
    }


async def test_jobs_by_state_are_exported_from_a_cached_count(db: Database, ingestor: Ingestor) -> None:
    for status, count in (("queued", 2), ("processing", 1), ("done", 3), ("failed", 1)):
        for _ in range(count):
            await add_job(db, status=status)
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("storage-jobs-test", None, extra_readers=[reader])
    try:
        ingestor.register_gauges(telemetry.meter)
        counts = ingestor.job_counts
        assert counts is not None
        # The first collection finds no count yet and asks for one; it never waits for the database.
        assert job_gauge(reader) == {}
        for _ in range(200):
            if counts.counts:
                break
            await asyncio.sleep(0.01)
        assert job_gauge(reader) == {"queued": 2, "processing": 1, "ready": 3, "failed": 1}
        # A storm of collections within the refresh interval: no new count.
        counted_at = counts.counted_at
        await add_job(db, status="queued")
        for _ in range(20):
            assert job_gauge(reader)["queued"] == 2
            await asyncio.sleep(0)
        assert counts.counted_at == counted_at
        # Once the counts are old, the next collection refreshes them.
        counts.max_age_s = 0.0
        job_gauge(reader)
        for _ in range(200):
            if counts.counted_at != counted_at:
                break
            await asyncio.sleep(0.01)
        assert job_gauge(reader)["queued"] == 3
    finally:
        telemetry.shutdown()
