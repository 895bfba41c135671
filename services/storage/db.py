"""The asyncpg pool (with the pgvector codec), SQL migrations, and acquiring with a timeout."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.connection import LoggedQuery
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import TracerProvider
from pgvector.asyncpg import register_vector
from studyassist.core.bootstrap import StartupError
from studyassist.core.errors import Unavailable

log = logging.getLogger(__name__)

# What the pool hands out: a proxy with asyncpg.Connection's methods.
Connection = PoolConnectionProxy

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any fixed number: every storage replica takes this lock while it migrates.
MIGRATION_LOCK_KEY = 0x5354_4F52  # "STOR"


# pgvector keeps an HNSW scan going until enough rows pass its filters (hnsw.iterative_scan) since 0.8.0.
ITERATIVE_SCAN_SINCE = (0, 8, 0)
# hnsw.ef_search every pooled connection starts with: a search needing no more (up to 30
# candidates, i.e. top-k up to 10) runs as one statement, with no transaction around a SET LOCAL
# (three round trips). On the index of migration 0002 (ef_construction 128), 100-120 gave
# recall@10 0.997-1.000 at 200,000 chunks. An index built with pgvector's default (64), which a
# large database keeps, needed 200 for 0.983-0.993.
HNSW_SESSION_EF_SEARCH = 120
HNSW_SESSION_EF_SEARCH_DEFAULT_BUILD = 200
HNSW_EF_CONSTRUCTION = 128
# Distinct SQL texts whose metric attributes are remembered (the service has a few dozen).
SUMMARY_CACHE_SIZE = 512
_VERB = re.compile(r"\s*(\w+)")
_WRITE_TARGET = re.compile(r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(\w+)", re.IGNORECASE)
_READ_SOURCE = re.compile(r"\bFROM\s+(\w+)", re.IGNORECASE)


def query_attributes(sql: str) -> dict[str, str]:
    """Low-cardinality attributes for one SQL text: its operation and main table.

    "WITH next AS (SELECT ... FROM ingestion_jobs ...) UPDATE ingestion_jobs ..." is an UPDATE of
    ingestion_jobs; "SELECT ... FROM chunks c, ..." a SELECT of chunks; "SET LOCAL ..." a SET.
    """
    write = next(
        # Not the locking clause (FOR UPDATE SKIP LOCKED) nor an upsert's DO UPDATE SET.
        (m for m in _WRITE_TARGET.finditer(sql) if not sql[: m.start()].rstrip().upper().endswith(("FOR", "DO"))),
        None,
    )
    if write is not None:
        operation, table = write.group(1).split()[0].upper(), write.group(2).lower()
    else:
        verb = _VERB.match(sql)
        operation = verb.group(1).upper() if verb else "OTHER"
        source = _READ_SOURCE.search(sql) if operation in ("SELECT", "WITH") else None
        operation = "SELECT" if operation == "WITH" else operation
        table = source.group(1).lower() if source else ""
    attributes = {"db.system.name": "postgresql", "db.operation.name": operation}
    if table:
        attributes["db.collection.name"] = table
        attributes["db.query.summary"] = f"{operation} {table}"
    else:
        attributes["db.query.summary"] = operation
    return attributes


class QueryTimer:
    """Records every query's duration (asyncpg's own timing, through its query logger) in one histogram.

    asyncpg calls ``record`` soon after each query on the event loop; the attributes of a SQL text
    are worked out once and remembered.
    """

    def __init__(self, meter: metrics.Meter) -> None:
        self.histogram = meter.create_histogram(
            "db.client.operation.duration", unit="s", description="Duration of database queries"
        )
        self._attributes: dict[str, dict[str, str]] = {}

    def attributes(self, sql: str) -> dict[str, str]:
        found = self._attributes.get(sql)
        if found is None:
            found = query_attributes(sql)
            if len(self._attributes) < SUMMARY_CACHE_SIZE:
                self._attributes[sql] = found
        return found

    def record(self, query: LoggedQuery) -> None:
        attributes = self.attributes(query.query)
        if query.exception is not None:
            attributes = {**attributes, "error.type": type(query.exception).__name__}
        self.histogram.record(query.elapsed, attributes)


def _connection_setup(timer: QueryTimer | None) -> Callable[[asyncpg.Connection], Coroutine[Any, Any, None]]:
    async def init(conn: asyncpg.Connection) -> None:
        await register_vector(conn)
        if timer is not None:
            conn.add_query_logger(timer.record)

    return init


class Database:
    """The pool plus the figures SREs watch (size, max, in use, idle, waiting)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        acquire_timeout_s: float,
        pgvector: tuple[int, ...] = (),
        *,
        url: str = "",
        server_settings: dict[str, str] | None = None,
    ) -> None:
        self.pool = pool
        self.acquire_timeout_s = acquire_timeout_s
        self.waiting = 0
        # The installed pgvector extension's version, e.g. (0, 8, 0); () when it is not installed.
        self.pgvector = pgvector
        self.url = url
        # What each connection is opened with (hnsw.ef_search among it).
        self.server_settings = dict(server_settings or {})

    @property
    def hnsw_ef_search(self) -> int:
        """The hnsw.ef_search every pooled connection starts with."""
        return int(self.server_settings.get("hnsw.ef_search", HNSW_SESSION_EF_SEARCH_DEFAULT_BUILD))

    async def tune_vector_search(self) -> None:
        """Open connections from now on with the hnsw.ef_search the chunk index needs (call it after
        the migrations: they may have rebuilt the index); the open ones are replaced."""
        async with self.pool.acquire() as conn:
            ef_search = await hnsw_ef_search(conn)
        if ef_search != self.hnsw_ef_search:
            self.server_settings["hnsw.ef_search"] = str(ef_search)
            self.pool.set_connect_args(self.url, server_settings=self.server_settings)
            await self.pool.expire_connections()

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

        def maximum(_: CallbackOptions) -> Iterable[Observation]:
            return observe(self.pool.get_max_size())

        def idle(_: CallbackOptions) -> Iterable[Observation]:
            return observe(self.pool.get_idle_size())

        def in_use(_: CallbackOptions) -> Iterable[Observation]:
            return observe(self.pool.get_size() - self.pool.get_idle_size())

        def waiting(_: CallbackOptions) -> Iterable[Observation]:
            return observe(self.waiting)

        meter.create_observable_gauge("db.pool.size", [size], description="Connections open in the pool")
        # The metrics service's pool utilisation and size advice divide in_use by this.
        meter.create_observable_gauge("db.pool.max", [maximum], description="Most connections the pool may open")
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
    connection but what every connection starts with (the hnsw.* settings; searches change them only
    with SET LOCAL; the migration lock is released in a finally), so the default
    "RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()" would only be one more round trip
    per release: half the queries of a simple read.
    """


def instrument_sql(tracer_provider: TracerProvider) -> Callable[[], None]:
    """A client span for every asyncpg query (process-wide); returns the undo."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]  # one instance per process
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=tracer_provider)

    def undo() -> None:
        instrumentor.uninstrument()

    return undo


async def hnsw_ef_search(conn: Connection) -> int:
    """The session ef_search the chunk vector index needs, from the settings it was built with."""
    options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE oid = to_regclass('chunks_embedding_hnsw')")
    built = dict(option.split("=", 1) for option in options or ())
    if int(built.get("ef_construction", "64")) >= HNSW_EF_CONSTRUCTION:
        return HNSW_SESSION_EF_SEARCH
    return HNSW_SESSION_EF_SEARCH_DEFAULT_BUILD


def parse_version(text: str) -> tuple[int, ...]:
    """A version's first three numbers: (0, 8, 0) for "0.8.0", (0, 7, 4) for "0.7.4-dev", () for none."""
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


async def connect(
    url: str, *, min_size: int, max_size: int, acquire_timeout_s: float, meter: metrics.Meter | None = None
) -> Database:
    """Open the pool, failing start-up with one clear line when PostgreSQL is not there.

    With ``meter``, every query's duration goes to the ``db.client.operation.duration`` histogram.
    """
    try:
        # The vector codec needs the extension, which the first migration creates: make sure it
        # exists before the pool's init runs on every connection.
        conn = await asyncio.wait_for(asyncpg.connect(url), timeout=10)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            pgvector = parse_version(
                await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'") or ""
            )
        finally:
            await conn.close()
        # Session settings sent when each connection opens (they survive release: no RESET ALL).
        # The ef_search an index of any build needs, until tune_vector_search knows the index.
        hnsw = {"hnsw.ef_search": str(HNSW_SESSION_EF_SEARCH_DEFAULT_BUILD)}
        if pgvector >= ITERATIVE_SCAN_SINCE:
            hnsw["hnsw.iterative_scan"] = "relaxed_order"
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                init=_connection_setup(QueryTimer(meter) if meter is not None else None),
                reset=_keep_session_state,
                server_settings=hnsw,
            ),
            timeout=15,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StartupError(f"PostgreSQL at DATABASE_URL is not reachable: {exc or type(exc).__name__}") from None
    return Database(pool, acquire_timeout_s, pgvector, url=url, server_settings=hnsw)


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
