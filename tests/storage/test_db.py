"""The pool, migrations and pool figures against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from storage.db import Database, connect, migrate, migration_files
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
    finally:
        await db.close()
        telemetry.shutdown()


async def test_unreachable_database_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match="not reachable"):
        await connect("postgresql://nobody@127.0.0.1:9/none", min_size=1, max_size=1, acquire_timeout_s=1)
