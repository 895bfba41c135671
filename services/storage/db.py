"""The asyncpg pool (with the pgvector codec), SQL migrations, and acquiring with a timeout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from pgvector.asyncpg import register_vector
from studyassist.core.bootstrap import StartupError
from studyassist.core.errors import Unavailable

log = logging.getLogger(__name__)

# What the pool hands out: a proxy with asyncpg.Connection's methods.
Connection = PoolConnectionProxy

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any fixed number: every storage replica takes this lock while it migrates.
MIGRATION_LOCK_KEY = 0x5354_4F52  # "STOR"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)


class Database:
    """The pool plus the figures SREs watch (size, in use, idle, waiting)."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float) -> None:
        self.pool = pool
        self.acquire_timeout_s = acquire_timeout_s
        self.waiting = 0

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection, or UNAVAILABLE when none frees up within the acquire timeout.

        A cancelled call leaves through ``async with``, which always returns the connection.
        """
        self.waiting += 1
        try:
            conn = await self.pool.acquire(timeout=self.acquire_timeout_s)
        except TimeoutError:
            raise Unavailable("database is busy, try again") from None
        except (OSError, asyncpg.PostgresConnectionError) as exc:
            raise Unavailable(f"database unreachable: {exc}") from None
        finally:
            self.waiting -= 1
        try:
            yield conn
        except (ConnectionError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            if isinstance(exc, asyncpg.InterfaceError) and "connection" not in str(exc):
                raise
            raise Unavailable(f"database connection lost: {exc}") from None
        finally:
            await self.pool.release(conn)

    def register_gauges(self, meter: metrics.Meter) -> None:
        def observe(value: int) -> Iterable[Observation]:
            yield Observation(value)

        def size(_: CallbackOptions) -> Iterable[Observation]:
            return observe(self.pool.get_size())

        def idle(_: CallbackOptions) -> Iterable[Observation]:
            return observe(self.pool.get_idle_size())

        def in_use(_: CallbackOptions) -> Iterable[Observation]:
            return observe(self.pool.get_size() - self.pool.get_idle_size())

        def waiting(_: CallbackOptions) -> Iterable[Observation]:
            return observe(self.waiting)

        meter.create_observable_gauge("db.pool.size", [size], description="Connections open in the pool")
        meter.create_observable_gauge("db.pool.idle", [idle], description="Pool connections idle")
        meter.create_observable_gauge("db.pool.in_use", [in_use], description="Pool connections in use")
        meter.create_observable_gauge("db.pool.waiting", [waiting], description="Callers waiting for a connection")

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout=5)
        except TimeoutError:
            self.pool.terminate()


async def _keep_session_state(conn: asyncpg.Connection) -> None:
    """Release a connection without asyncpg's default reset query.

    The pool still rolls back a transaction left open. Nothing here keeps session state on a pooled
    connection (settings are SET LOCAL; the migration lock is released in a finally), so the default
    "RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()" would only be one more round trip
    per release: half the queries of a simple read.
    """


async def connect(url: str, *, min_size: int, max_size: int, acquire_timeout_s: float) -> Database:
    """Open the pool, failing start-up with one clear line when PostgreSQL is not there."""
    try:
        # The vector codec needs the extension, which the first migration creates: make sure it
        # exists before the pool's init runs on every connection.
        conn = await asyncio.wait_for(asyncpg.connect(url), timeout=10)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            await conn.close()
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                url, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session_state
            ),
            timeout=15,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StartupError(f"PostgreSQL at DATABASE_URL is not reachable: {exc or type(exc).__name__}") from None
    return Database(pool, acquire_timeout_s)


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("*.sql"))


async def migrate(db: Database, *, embedding_dim: int, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not applied yet, in file-name order, each in its own transaction.

    An advisory lock makes concurrent starts of several replicas apply each file once.
    """
    applied_now: list[str] = []
    async with db.pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for path in migration_files(directory):
                if path.name in done:
                    continue
                sql = path.read_text().replace("{{EMBEDDING_DIM}}", str(embedding_dim))
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.name)
                applied_now.append(path.name)
                log.info("applied migration", extra={"fields": {"version": path.name}})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now
