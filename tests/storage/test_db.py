"""The pool, migrations and pool figures against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from storage.db import (
    HNSW_SESSION_EF_SEARCH_DEFAULT_BUILD,
    ITERATIVE_SCAN_SINCE,
    MIGRATIONS_DIR,
    Database,
    connect,
    instrument_sql,
    migrate,
    migration_files,
    parse_version,
)
from studyassist.core.bootstrap import StartupError
from studyassist.core.errors import Unavailable
from studyassist.core.telemetry import setup_telemetry


async def test_migrations_apply_once_under_concurrent_starts(database_url: str) -> None:
    first = await connect(database_url, min_size=1, max_size=2, acquire_timeout_s=5)
    second = await connect(database_url, min_size=1, max_size=2, acquire_timeout_s=5)
    try:
        applied = await asyncio.gather(migrate(first, embedding_dim=384), migrate(second, embedding_dim=384))
        names = [p.name for p in migration_files()]
        # One start applied every file, the other waited on the lock and found nothing to do.
        assert sorted(applied, key=len) == [[], names]
        async with first.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(names)
            dim = await conn.fetchval(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
            )
            assert dim == 384
        assert await migrate(first, embedding_dim=384) == []
    finally:
        await first.close()
        await second.close()


async def test_exhausted_pool_answers_unavailable_quickly(database_url: str) -> None:
    db = await connect(database_url, min_size=1, max_size=1, acquire_timeout_s=0.2)
    try:
        async with db.connection():
            started = time.monotonic()
            with pytest.raises(Unavailable, match="busy"):
                async with db.connection():
                    pass
            assert time.monotonic() - started < 2
        # A cancelled call gives its connection back.
        holder = asyncio.create_task(_hold(db))
        await asyncio.sleep(0.05)
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await db.close()


async def _hold(db: Database) -> None:
    async with db.connection():
        await asyncio.sleep(60)


async def test_pool_figures_are_exported(database_url: str) -> None:
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("storage-pool-test", None, extra_readers=[reader])
    db = await connect(database_url, min_size=2, max_size=3, acquire_timeout_s=1)
    try:
        db.register_gauges(telemetry.meter)
        async with db.connection():
            data = reader.get_metrics_data()
        assert data is not None
        figures = {
            metric.name: metric.data.data_points[0].value  # type: ignore[union-attr]
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name.startswith("db.pool.")
        }
        assert figures["db.pool.size"] == 2 and figures["db.pool.in_use"] == 1 and figures["db.pool.idle"] == 1
        assert figures["db.pool.waiting"] == 0
        # The metrics service's pool utilisation and size advice need the maximum (it drops pools without one).
        assert figures["db.pool.max"] == 3
    finally:
        await db.close()
        telemetry.shutdown()


async def test_query_durations_are_recorded_by_operation(database_url: str) -> None:
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("storage-query-test", None, extra_readers=[reader])
    db = await connect(database_url, min_size=1, max_size=1, acquire_timeout_s=1, meter=telemetry.meter)
    try:
        await migrate(db, embedding_dim=384)
        async with db.connection() as conn:
            for _ in range(3):
                await conn.fetchval("SELECT count(*) FROM users WHERE id = $1", uuid.uuid4())
            await conn.execute("DELETE FROM chunks WHERE user_id = $1", uuid.uuid4())
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("SELECT * FROM no_such_table")
        await asyncio.sleep(0.01)  # asyncpg hands each timing to its loggers with call_soon
        data = reader.get_metrics_data()
        assert data is not None
        (histogram,) = [
            metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "db.client.operation.duration"
        ]
        assert histogram.unit == "s"
        points = {
            (p.attributes or {}).get("db.query.summary"): p
            for p in histogram.data.data_points  # type: ignore[union-attr]
        }
        users = points["SELECT users"]
        assert users.count == 3 and 0 < users.sum < 5  # type: ignore[union-attr]
        assert (users.attributes or {})["db.operation.name"] == "SELECT"
        assert (users.attributes or {})["db.collection.name"] == "users"
        assert points["DELETE chunks"].count == 1  # type: ignore[union-attr]
        failed = points["SELECT no_such_table"]
        assert (failed.attributes or {})["error.type"] == "UndefinedTableError"
    finally:
        await db.close()
        telemetry.shutdown()


async def test_sql_spans_when_instrumented(database_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    undo = instrument_sql(provider)
    try:
        db = await connect(database_url, min_size=1, max_size=1, acquire_timeout_s=1)
        try:
            with provider.get_tracer("test").start_as_current_span("call") as parent:
                async with db.connection() as conn:
                    assert await conn.fetchval("SELECT 41 + $1::int", 1) == 42
        finally:
            await db.close()
    finally:
        undo()
    spans = [s for s in exporter.get_finished_spans() if s.name != "call"]
    query = [s for s in spans if "SELECT 41" in str((s.attributes or {}).values())]
    assert query and query[0].parent is not None
    assert query[0].parent.span_id == parent.get_span_context().span_id


async def test_pgvector_version_decides_iterative_scans(database_url: str) -> None:
    assert parse_version("0.8.0") == (0, 8, 0) >= ITERATIVE_SCAN_SINCE
    assert parse_version("0.7.4-dev") == (0, 7, 4) < ITERATIVE_SCAN_SINCE
    assert parse_version("") == ()
    db = await connect(database_url, min_size=1, max_size=1, acquire_timeout_s=1)
    try:
        version = db.pgvector
        async with db.connection() as conn:
            installed = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        assert version == parse_version(installed) and version >= (0, 5)
    finally:
        await db.close()


async def test_unreachable_database_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match="not reachable"):
        await connect("postgresql://nobody@127.0.0.1:9/none", min_size=1, max_size=1, acquire_timeout_s=1)


async def test_a_large_chunk_table_keeps_its_vector_index_through_migration_0002(
    database_url: str, tmp_path: Path
) -> None:
    # Rebuilding the index of a large table would outlast a start-up (and roll back when the
    # start-up probe kills the pod, forever): 0002 leaves such an index as it is.
    first_only = tmp_path / "migrations"
    first_only.mkdir()
    (first_only / "0001_init.sql").write_text((MIGRATIONS_DIR / "0001_init.sql").read_text())
    db = await connect(database_url, min_size=1, max_size=1, acquire_timeout_s=5)
    try:
        await migrate(db, embedding_dim=2, directory=first_only)
        user, document = uuid.uuid4(), uuid.uuid4()
        async with db.connection() as conn:
            await conn.execute("DROP INDEX chunks_embedding_hnsw")  # (a faster load; rebuilt below)
            await conn.execute("INSERT INTO users (id, email, password_hash) VALUES ($1, 'big@ptit.edu.vn', 'h')", user)
            await conn.execute(
                "INSERT INTO documents (id, user_id, sha256, kind, size_bytes, blob_name, status) "
                "VALUES ($1, $2, 'x', 4, 0, 'none', 3)",
                document,
                user,
            )
            await conn.execute(
                "INSERT INTO chunks (id, document_id, user_id, chunk_index, model, text, text_folded, "
                "char_start, char_end, embedding) SELECT gen_random_uuid(), $1, $2, i, 'm', '', '', 0, 0, "
                "ARRAY[1, i]::real[]::vector FROM generate_series(1, 20500) AS i",
                document,
                user,
            )
            await conn.execute(
                "CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops) "
                "WITH (m = 16, ef_construction = 64)"
            )
            await conn.execute("ANALYZE chunks")
        applied = await migrate(db, embedding_dim=2)
        # Every migration after 0001 ran, in order (the later ones do not touch the vector index).
        later = [p.name for p in migration_files()][1:]
        assert applied == later and applied[0] == "0002_hnsw_ef_construction.sql"
        async with db.connection() as conn:
            options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'chunks_embedding_hnsw'")
        assert "ef_construction=64" in options
        await db.tune_vector_search()
        assert db.hnsw_ef_search == HNSW_SESSION_EF_SEARCH_DEFAULT_BUILD
    finally:
        await db.close()
