"""Gateway test fixtures: the in-memory storage backend and the gateway app served by uvicorn
in-process on a free port (real HTTP over TCP, so SSE and streamed uploads behave as in production)."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from gateway.config import Settings
from gateway.routes import Route
from gateway.server import build_app
from gateway.transcode import Transcoder
from starlette.applications import Starlette
from studyassist.core.config import CommonSettings
from studyassist.core.server import Server
from studyassist.core.telemetry import setup_telemetry
from studyassist.core.testing import ServiceProcess, spawn_service

from tests.conftest import _create_database
from tests.gateway.backend import FakeStorage, start_storage

SECRET = "test-secret-" + "x" * 40
# The app the last serve_gateway in this task built (for tests that look inside it).
app_var: contextvars.ContextVar[Starlette] = contextvars.ContextVar("gateway_app")
DEAD_ADDR = "127.0.0.1:9"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serve_gateway(env: dict[str, str], data_dir: Path) -> AsyncIterator[str]:
    full = {"JWT_SECRET": SECRET, "CHAT_ADDR": DEAD_ADDR, "METRICS_ADDR": DEAD_ADDR, **env}
    settings = Settings.from_env(full)
    common = CommonSettings.from_env({"DATA_DIR": str(data_dir), "REDIS_URL": full.get("REDIS_URL", "")})
    app = build_app(settings, common, setup_telemetry("gateway-test", None), SECRET)
    app_var.set(app)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http="httptools",
            loop="none",
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@dataclass
class Stack:
    url: str
    client: httpx.AsyncClient
    storage: FakeStorage
    storage_addr: str
    app: Starlette

    def routes(self) -> list[Route]:
        """The transcoder's routes (read from the backends' descriptors)."""
        for route in self.app.routes:
            transcoder = getattr(getattr(route, "endpoint", None), "__self__", None)
            if isinstance(transcoder, Transcoder):
                return transcoder.table.routes
        raise AssertionError("no transcoder route")

    async def register(self, email: str | None = None) -> dict[str, str]:
        email = email or f"u{uuid.uuid4().hex[:8]}@example.edu.vn"
        reply = await self.client.post(
            "/v1/auth/register", json={"email": email, "password": "correct horse", "display_name": "Sinh viên"}
        )
        assert reply.status_code == 201, reply.text
        body = reply.json()
        return {
            "user_id": body["user"]["user_id"],
            "access": body["access_token"],
            "refresh": body["refresh_token"],
            "email": email,
        }


MakeStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(tmp_path: Path) -> AsyncIterator[MakeStack]:
    """``await make_stack(**env)``: storage backend + gateway with extra settings."""
    servers: list[Server] = []
    contexts: list[object] = []
    clients: list[httpx.AsyncClient] = []

    async def make(**env: str) -> Stack:
        server, servicer, address = await start_storage()
        servers.append(server)
        context = serve_gateway({"STORAGE_ADDR": address, **env}, tmp_path)
        url = await context.__aenter__()
        contexts.append(context)
        client = httpx.AsyncClient(base_url=url, timeout=10)
        clients.append(client)
        return Stack(url, client, servicer, address, app_var.get())

    yield make
    for client in clients:
        await client.aclose()
    for context in contexts:
        await context.__aexit__(None, None, None)  # type: ignore[attr-defined]
    for server in servers:
        await server.stop(0)


@pytest.fixture
async def stack(make_stack: MakeStack) -> Stack:
    return await make_stack()


@pytest.fixture(scope="session")
def real_storage(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The real storage service (own database); ingestion off, so no embedding service is needed."""
    service = spawn_service(
        "storage",
        {
            "STORAGE_PORT": "0",
            "DATABASE_URL": _create_database(postgres_url),
            "EMBEDDING_ADDR": DEAD_ADDR,
            "INGEST_WORKERS": "0",
            "BLOB_DIR": str(tmp_path_factory.mktemp("gw-blobs")),
            "REDIS_URL": "",
        },
    )
    yield service
    service.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
