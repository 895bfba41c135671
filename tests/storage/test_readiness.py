"""Storage is ready only while its database answers; it stays alive meanwhile.

Real parts: a private embedded PostgreSQL (pgserver) that the test stops and starts again, the
storage service as a real process on it, and the gateway (in-process, real HTTP) whose /readyz
requires storage."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pgserver
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pgserver._commands import pg_ctl
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.server import LIVENESS_SERVICE
from studyassist.core.testing import ServiceProcess
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from tests.conftest import spawn_storage
from tests.gateway.conftest import serve_gateway

STORAGE_SERVICE = "studyassist.storage.v1.StorageService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DEAD_ADDR = "127.0.0.1:9"


@pytest.fixture
def private_postgres() -> Iterator[pgserver.PostgresServer]:
    """A PostgreSQL of this test's own, so stopping it disturbs no other test."""
    server = pgserver.get_server(Path("/tmp") / f"sa-pgr-{uuid.uuid4().hex[:8]}", cleanup_mode="delete")
    yield server
    server.cleanup()


@pytest.fixture
def storage_on_private_postgres(private_postgres: pgserver.PostgresServer, tmp_path: Path) -> Iterator[ServiceProcess]:
    service = spawn_storage(private_postgres.get_uri(), DEAD_ADDR, tmp_path / "blobs", {"DB_PROBE_INTERVAL_S": "0.2"})
    yield service
    service.stop()


@pytest.fixture
async def health(storage_on_private_postgres: ServiceProcess) -> AsyncIterator[health_pb2_grpc.HealthStub]:
    channel = create_channel(storage_on_private_postgres.address)
    yield health_pb2_grpc.HealthStub(channel)
    await channel.close(None)


async def next_status(
    watch: grpc.aio.UnaryStreamCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
) -> int:
    reply = await watch.read()
    assert isinstance(reply, health_pb2.HealthCheckResponse), "the health watch ended"
    return int(reply.status)


async def test_storage_is_not_ready_while_its_database_is_down_and_ready_again_after(
    private_postgres: pgserver.PostgresServer,
    storage_on_private_postgres: ServiceProcess,
    health: health_pb2_grpc.HealthStub,
    tmp_path: Path,
) -> None:
    async def status(name: str) -> int:
        return int((await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status)

    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
    assert await next_status(watch) == SERVING
    gateway = serve_gateway({"STORAGE_ADDR": storage_on_private_postgres.address}, tmp_path / "gw")
    async with gateway as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.get("/readyz")).status_code == 200

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=private_postgres.pgdata, user=private_postgres.system_user)
        assert await next_status(watch) == NOT_SERVING  # pushed once the probe finds it down
        assert await status(STORAGE_SERVICE) == NOT_SERVING
        assert await status(LIVENESS_SERVICE) == SERVING  # alive: nothing to restart
        down = await client.get("/readyz")
        assert down.status_code == 503, down.text
        assert down.json()["backends"]["storage"] == "NOT_SERVING" and "storage" in down.json()["degraded"]
        # A call that needs the database says it is unavailable (retryable), not an internal error.
        channel = create_channel(storage_on_private_postgres.address)
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=user_metadata(str(uuid.uuid4())), timeout=10)
        await channel.close(None)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        private_postgres.ensure_postgres_running()  # the same data directory and socket
        assert await next_status(watch) == SERVING
        assert await status(STORAGE_SERVICE) == SERVING
        assert (await client.get("/readyz")).status_code == 200
    watch.cancel()
