"""kill -9 of the storage process during uploads and ingestion loses nothing that was acknowledged."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import asyncpg
import grpc
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.testing import ServiceProcess, spawn_service
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from tests.storage.conftest import upload_requests

TERMINAL = (storage_pb2.FILE_STATUS_READY, storage_pb2.FILE_STATUS_FAILED)


def start(database_url: str, embedding: ServiceProcess, blob_dir: Path) -> ServiceProcess:
    return spawn_service(
        "storage",
        {
            "STORAGE_PORT": "0",
            "DATABASE_URL": database_url,
            "EMBEDDING_ADDR": embedding.address,
            "BLOB_DIR": str(blob_dir),
            "INGEST_LEASE_S": "1.5",
            "DB_POOL_MIN": "1",
            "REDIS_URL": "",
        },
    )


def document(number: int) -> bytes:
    lines = [f"Tài liệu số {number}, đoạn {i}: cấu trúc dữ liệu, đồ thị và thuật toán sắp xếp." for i in range(20)]
    return "\n".join(lines).encode()


async def test_kill_9_during_uploads_and_ingestion(
    database_url: str, embedding_service: ServiceProcess, tmp_path: Path
) -> None:
    blob_dir = tmp_path / "blobs"
    first = start(database_url, embedding_service, blob_dir)
    acked: dict[str, str] = {}  # file id -> sha256 the service acknowledged
    enough_acked = asyncio.Event()
    try:
        channel = create_channel(first.address, default_timeout=30)
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        user = (await stub.CreateUser(storage_pb2.CreateUserRequest(email="k@ptit.edu.vn", password_hash="h"))).user_id

        async def upload(number: int) -> None:
            data = document(number)
            try:
                file = await stub.UploadFile(
                    upload_requests(f"doc{number}.txt", data, chunk_size=2048), metadata=user_metadata(user)
                )
            except grpc.aio.AioRpcError:
                return  # not acknowledged: the service may or may not have it
            assert file.sha256 == hashlib.sha256(data).hexdigest()
            acked[file.file_id] = file.sha256
            if len(acked) >= 6:
                enough_acked.set()

        tasks = [asyncio.create_task(upload(n)) for n in range(16)]
        await asyncio.wait_for(enough_acked.wait(), 60)
        first.process.kill()  # SIGKILL: no shutdown hooks, no flush
        first.process.wait()
        await asyncio.gather(*tasks)
        await channel.close(None)
    finally:
        first.stop()

    second = start(database_url, embedding_service, blob_dir)
    try:
        channel = create_channel(second.address, default_timeout=60)
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        me = user_metadata(user)
        for file_id, sha256 in acked.items():
            file = await stub.GetFile(storage_pb2.GetFileRequest(file_id=file_id), metadata=me)
            assert file.sha256 == sha256
        listed = await stub.ListFiles(storage_pb2.ListFilesRequest(page_size=100), metadata=me)
        assert set(acked) <= {f.file_id for f in listed.files}

        async def settle(file_id: str) -> storage_pb2.File:
            last = None
            async for update in stub.WatchFile(storage_pb2.GetFileRequest(file_id=file_id), metadata=me):
                last = update
            assert last is not None
            return last

        finals = await asyncio.wait_for(asyncio.gather(*(settle(f.file_id) for f in listed.files)), 60)
        assert all(f.status in TERMINAL for f in finals)
        assert all(f.status == storage_pb2.FILE_STATUS_READY for f in finals), [f.error for f in finals]
        await channel.close(None)
    finally:
        second.stop()

    conn = await asyncpg.connect(database_url)
    try:
        # Every blob is on disk with the bytes its row says; no chunk is duplicated; no job is stuck.
        for row in await conn.fetch("SELECT sha256, blob_name FROM documents"):
            assert hashlib.sha256((blob_dir / row["blob_name"]).read_bytes()).hexdigest() == row["sha256"]
        per_document = await conn.fetch(
            "SELECT d.chunks_total, count(c.id) AS stored, count(DISTINCT c.chunk_index) AS distinct_indexes "
            "FROM documents d LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id"
        )
        for row in per_document:
            assert row["stored"] == row["distinct_indexes"] == row["chunks_total"] > 0
        assert await conn.fetchval("SELECT count(*) FROM ingestion_jobs WHERE status NOT IN ('done', 'failed')") == 0
    finally:
        await conn.close()
