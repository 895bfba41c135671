"""Pytest fixtures shared by every service's tests (loaded as a plugin by tests/conftest.py).

Real parts only: an embedded PostgreSQL with pgvector (pgserver), the Redis at ``REDIS_URL``
(missing Redis skips locally but fails under ``CI=true``), real gRPC servers on port 0.
We use this port-0 fixture rather than pytest-grpc: pytest-grpc drives the synchronous
``grpc.server`` API and cannot host the asyncio servicers every service uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis
from opentelemetry import metrics, trace

from studyassist.core.server import Server, ServiceSpec, create_server
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# One mesh key for the test session: every service a test spawns inherits it (spawn_service passes
# our environment on), and the test process and the servers it builds in-process read it
# (studyassist.core.identity), so user_metadata() keeps producing assertions every backend accepts.
os.environ.setdefault("MESH_KEY", secrets.token_urlsafe(48))
# Debian's Chromium, never a downloaded build, with the flags the browser tests and the web benchmark share.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def serving(build: Callable[[], Awaitable[tuple[Server, int]]]) -> AsyncIterator[str]:
    """Start a server built on port 0, yield its ``127.0.0.1:port`` address, stop it after."""
    server, port = await build()
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=1.0)


class StandInServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    """An EmbeddingService stand-in for exercising the shared server itself: a subclass answers Embed
    as its test needs; Info and Stats answer empty."""

    async def Info(
        self, request: embedding_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.InfoResponse:
        return embedding_pb2.InfoResponse()

    async def Stats(
        self, request: embedding_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.StatsResponse:
        return embedding_pb2.StatsResponse()


def stand_in_server(
    servicer: embedding_pb2_grpc.EmbeddingServiceServicer,
    *,
    meter: metrics.Meter | None = None,
    tracer: trace.Tracer | None = None,
) -> tuple[Server, int]:
    """Build (not start) a server on 127.0.0.1:0 serving ``servicer`` as the EmbeddingService."""
    name = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
    return create_server(
        "127.0.0.1:0",
        [ServiceSpec(name, servicer, embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server)],
        meter=meter,
        tracer=tracer,
    )


@dataclass
class ServiceProcess:
    """A service started as a real process (``python -m <module>``) on a free port."""

    module: str
    process: subprocess.Popen[str]
    port: int
    log_lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn_service(module: str, env: dict[str, str], *, timeout: float = 120.0) -> ServiceProcess:
    """Run ``python -m module`` with ``env`` added to ours; wait for its "serving" log line.

    Set the service's port variable to 0 in ``env``: the service reports the port it bound.
    """
    full_env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "none", "LOG_LEVEL": "info", **env}
    process = subprocess.Popen(
        [sys.executable, "-m", module], env=full_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    lines: list[str] = []
    port: list[int] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line.rstrip())
            del lines[:-500]
            if not port and '"serving"' in line:
                try:
                    port.append(int(json.loads(line)["port"]))
                    ready.set()
                except (ValueError, KeyError):
                    pass
        ready.set()

    threading.Thread(target=pump, daemon=True, name=f"{module}-stderr").start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"{module} did not start in {timeout}s; log:\n" + "\n".join(lines[-30:]))
    if not port:
        process.wait(5)
        raise RuntimeError(f"{module} exited with {process.returncode}; log:\n" + "\n".join(lines[-30:]))
    return ServiceProcess(module, process, port[0], lines)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded PostgreSQL 16 + pgvector for the whole test session (or TEST_DATABASE_URL)."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    import pgserver

    # Short path: PostgreSQL's unix socket path must stay under ~100 bytes.
    data_dir = Path("/tmp") / f"sa-pg-{uuid.uuid4().hex[:8]}"
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
async def database_url(postgres_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield await create_database(postgres_url, name)
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def create_database(admin_url: str, name: str) -> str:
    """Create the empty database ``name`` on the server of ``admin_url``; return its URL."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return _with_database(admin_url, name)


def _with_database(url: str, name: str) -> str:
    # pgserver URIs look like postgresql://postgres:@/postgres?host=/tmp/x
    base, sep, query = url.partition("?")
    scheme_auth, _, _old = base.rpartition("/")
    return f"{scheme_auth}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis; fails under CI=true when it is not there, skips otherwise."""
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        if in_ci():
            pytest.fail(f"Redis at {url} is required under CI=true: {exc}")
        pytest.skip(f"Redis at {url} not reachable: {exc}")
    return url


@pytest.fixture
def key_prefix() -> str:
    """A unique Redis key prefix so tests never see each other's keys."""
    return f"test:{uuid.uuid4().hex[:10]}:"


class TcpProxy:
    """A TCP relay on the running event loop that a test can cut and restore: a peer (Redis, say)
    that goes away mid-run and comes back, without stopping the real server behind it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.up = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Drop every open connection; new ones are refused until :meth:`restore`."""
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if not self.up:
            client_writer.transport.abort()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers |= {client_writer, upstream_writer}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        try:
            await asyncio.gather(pump(client_reader, upstream_writer), pump(upstream_reader, client_writer))
        finally:
            self._writers -= {client_writer, upstream_writer}
