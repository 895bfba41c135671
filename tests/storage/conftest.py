"""Storage test fixtures: an in-process storage server (build() on port 0) on a fresh database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from storage.config import Settings
from storage.server import build
from studyassist.core.channels import create_channel, stream_unary_response, user_metadata
from studyassist.core.config import CommonSettings
from studyassist.core.telemetry import setup_telemetry
from studyassist.core.testing import ServiceProcess, serving
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

TERMINAL = (storage_pb2.FILE_STATUS_READY, storage_pb2.FILE_STATUS_FAILED)


@dataclass
class StorageClient:
    """A stub plus helpers that act as one user or another."""

    address: str
    stub: storage_pb2_grpc.StorageServiceAsyncStub

    async def new_user(self, email: str | None = None) -> str:
        user = await self.stub.CreateUser(
            storage_pb2.CreateUserRequest(
                email=email or f"{uuid.uuid4().hex[:10]}@ptit.edu.vn", display_name="Sinh viên", password_hash="h"
            )
        )
        return user.user_id

    async def upload(
        self, user_id: str, name: str, data: bytes, *, chunk_size: int = 256 * 1024, content_type: str = ""
    ) -> storage_pb2.File:
        return await stream_unary_response(
            self.stub.UploadFile(
                upload_requests(name, data, chunk_size=chunk_size, content_type=content_type),
                metadata=user_metadata(user_id),
            )
        )

    async def wait_done(self, user_id: str, file_id: str, limit_s: float = 60.0) -> storage_pb2.File:
        async def watch() -> storage_pb2.File:
            last = None
            async for update in self.stub.WatchFile(
                storage_pb2.GetFileRequest(file_id=file_id), metadata=user_metadata(user_id), timeout=limit_s
            ):
                last = update
            assert last is not None
            return last

        return await asyncio.wait_for(watch(), limit_s)


async def upload_requests(
    name: str, data: bytes, *, chunk_size: int = 256 * 1024, content_type: str = ""
) -> AsyncIterator[storage_pb2.UploadFileRequest]:
    yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name=name, content_type=content_type))
    for start in range(0, len(data), chunk_size):
        yield storage_pb2.UploadFileRequest(chunk=data[start : start + chunk_size])


def storage_settings(database_url: str, embedding_addr: str, blob_dir: Path, **extra: str) -> Settings:
    env = {
        "DATABASE_URL": database_url,
        "EMBEDDING_ADDR": embedding_addr,
        "BLOB_DIR": str(blob_dir),
        "STORAGE_PORT": "0",
        "DB_POOL_MIN": "1",
        "DB_POOL_MAX": "5",
        **extra,
    }
    return Settings.from_env(env)


@pytest.fixture
def storage_factory(
    database_url: str, embedding_service: ServiceProcess, tmp_path: Path
) -> Callable[..., AsyncIterator[StorageClient]]:
    """``async with storage_factory(**env) as client``: a storage server with extra settings."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def start(**extra: str) -> AsyncIterator[StorageClient]:
        settings = storage_settings(database_url, embedding_service.address, tmp_path / "blobs", **extra)
        common = CommonSettings.from_env({"DATA_DIR": str(tmp_path)})
        telemetry = setup_telemetry("storage-test", None)
        async with serving(lambda: build(settings, common, telemetry)) as address:
            channel = create_channel(address, default_timeout=60)
            try:
                yield StorageClient(address, storage_pb2_grpc.StorageServiceStub(channel))
            finally:
                await channel.close(None)

    return start  # type: ignore[return-value]


@pytest.fixture
async def storage(storage_factory: Callable[..., AsyncIterator[StorageClient]]) -> AsyncIterator[StorageClient]:
    async with storage_factory() as client:  # type: ignore[attr-defined]
        yield client


def codes(errors: Iterable[grpc.aio.AioRpcError]) -> list[grpc.StatusCode]:
    return [e.code() for e in errors]
