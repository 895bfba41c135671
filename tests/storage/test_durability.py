"""kill -9 of the storage process during uploads and ingestion loses nothing that was acknowledged.

The kill is made to land mid-flight on both paths, not left to chance:

- uploads: multi-MiB PDFs streamed in 1 MiB chunks, several at once. Some finish and are
  acknowledged before the kill; two ("held") send their metadata and two chunks, then pause until
  the kill has happened, and the test waits until the service has written those chunks to its temp
  files; a few more ("racers") are mid-stream when the kill comes, their fate left open.
- ingestion: documents of several embedding batches, ingested through a gate in front of the real
  embedding service that forwards one full batch and holds every later full batch until the kill.
  The document whose batch went through therefore sits at 0 < chunks_done < chunks_total, job
  `processing`, and stays there; the test polls the database until it sees that, then kills.

After a restart (on the real embedding service), every acknowledged upload must be there with the
sha256 of its bytes (recomputed from the blob file), the held uploads must have left no row and no
committed blob, every job must end within a bound (ready, as every file here is valid; failed would
be allowed by the issue but means a bug here), and no chunk may be duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from storage.ingest import EMBED_BATCH
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.testing import ServiceProcess, spawn_service
from studyassist.embedding.v1 import embedding_pb2
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from tests.storage.conftest import upload_requests

MIB = 1024 * 1024
EMBED_METHOD = "/studyassist.embedding.v1.EmbeddingService/Embed"
ACKED_UPLOADS = 4  # 4 MiB PDFs, acknowledged before the kill
HELD_UPLOADS = 2  # 4 MiB PDFs that stop after HELD_CHUNKS chunks until the kill
HELD_CHUNKS = 2
RACING_UPLOADS = 2  # 4 MiB PDFs in flight when the kill comes
UPLOAD_MIB = 4
BIG_DOCUMENTS = 2  # text documents of several embedding batches each
CHUNK_TOKENS = "64"  # small chunks: several batches of cheap embeddings per document
WAIT_S = 30.0  # bound on each wait for the service to reach a state
SETTLE_S = 60.0  # bound on every job ending after the restart


def start(database_url: str, embedding_addr: str, blob_dir: Path) -> ServiceProcess:
    return spawn_service(
        "storage",
        {
            "STORAGE_PORT": "0",
            "DATABASE_URL": database_url,
            "EMBEDDING_ADDR": embedding_addr,
            "BLOB_DIR": str(blob_dir),
            "INGEST_LEASE_S": "1.5",
            "CHUNK_TOKENS": CHUNK_TOKENS,
            "CHUNK_OVERLAP_TOKENS": "8",
            "DB_POOL_MIN": "1",
            "REDIS_URL": "",
        },
    )


def big_document(number: int) -> bytes:
    """About 115 chunks of 64 tokens: four embedding batches."""
    lines = [f"Tài liệu số {number}, đoạn {i}: cấu trúc dữ liệu, đồ thị và thuật toán sắp xếp." for i in range(200)]
    return "\n".join(lines).encode()


def padded_pdf(number: int, size: int) -> bytes:
    """A valid one-page PDF of about ``size`` bytes: a line of text (one chunk) plus an unreferenced
    stream of random bytes, so it is large on the wire and on disk but cheap to ingest."""
    text = f"Bai giang so {number}: cau truc du lieu va giai thuat."
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]

    def build(padding: bytes) -> bytes:
        out = bytearray(b"%PDF-1.4\n")
        offsets = []
        filler = b"<< /Length %d >>\nstream\n" % len(padding) + padding + b"\nendstream"
        for index, body in enumerate([*objects, filler]):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % (index + 1) + body + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
        out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
        out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, xref)
        return bytes(out)

    return build(random.Random(number).randbytes(size - len(build(b""))))


class EmbeddingGate(grpc.GenericRpcHandler):
    """A pass-through in front of the embedding service that forwards the first full batch and holds
    every later full batch (smaller calls pass) until ``release``: the document whose batch went
    through stays part-embedded, with its next batch waiting, for as long as the test likes."""

    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self.upstream = upstream
        self.full_batches = 0
        self.held = 0
        self.released = asyncio.Event()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        forward = self.upstream.unary_unary(method, None, None)  # raw bytes both ways

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if method == EMBED_METHOD and len(embedding_pb2.EmbedRequest.FromString(request).texts) >= EMBED_BATCH:
                self.full_batches += 1
                if self.full_batches > 1:
                    self.held += 1
                    await self.released.wait()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "held until the storage process was killed")
            reply: bytes = await forward(request, timeout=60)
            return reply

        return grpc.unary_unary_rpc_method_handler(handle)


@dataclass
class Upload:
    name: str
    data: bytes
    sha256: str = ""
    file_id: str = ""  # set once acknowledged
    sent_chunks: int = 0
    error: grpc.StatusCode | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()

    async def requests(self, hold_after: int | None = None) -> AsyncIterator[storage_pb2.UploadFileRequest]:
        async for request in upload_requests(self.name, self.data, chunk_size=MIB):
            yield request
            if request.WhichOneof("part") == "chunk":
                self.sent_chunks += 1
                if self.sent_chunks == hold_after:
                    await self.release.wait()
                    return  # the call is dead by now; never finish the stream

    async def run(self, stub: Any, user: str, hold_after: int | None = None) -> None:
        try:
            file = await stub.UploadFile(self.requests(hold_after), metadata=user_metadata(user))
        except grpc.aio.AioRpcError as exc:
            self.error = exc.code()  # not acknowledged: the service may or may not have it
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task itself is being cancelled
            self.error = grpc.StatusCode.CANCELLED  # the call was, by closing its channel: not acknowledged
            return
        assert file.sha256 == self.sha256, self.name
        self.file_id = file.file_id


async def until(what: str, check: Callable[[], Awaitable[Any]], limit_s: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        if result := await check():
            return result
        assert time.monotonic() < deadline, f"not reached within {limit_s:g} s: {what}"
        await asyncio.sleep(0.02)


def committed_blobs(blob_dir: Path) -> dict[str, str]:
    """blob name -> sha256 of its bytes, for every committed blob (temp files excluded)."""
    return {
        path.relative_to(blob_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in blob_dir.rglob("*")
        if path.is_file() and path.parent != blob_dir / "tmp"
    }


MID_INGESTION = (
    "SELECT d.id, d.chunks_done, d.chunks_total, "
    "(SELECT count(*) FROM chunks c WHERE c.document_id = d.id) AS stored "
    "FROM ingestion_jobs j JOIN documents d ON d.id = j.document_id "
    "WHERE j.status = 'processing' AND d.chunks_done > 0 AND d.chunks_done < d.chunks_total"
)


async def test_kill_9_during_uploads_and_ingestion(
    database_url: str, embedding_service: ServiceProcess, tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as cleanup:
        await kill_9_during_uploads_and_ingestion(cleanup, database_url, embedding_service, tmp_path)


async def kill_9_during_uploads_and_ingestion(
    cleanup: contextlib.AsyncExitStack, database_url: str, embedding_service: ServiceProcess, tmp_path: Path
) -> None:
    blob_dir = tmp_path / "blobs"
    db = await asyncpg.connect(database_url)
    cleanup.push_async_callback(db.close)
    upstream = create_channel(embedding_service.address, default_timeout=120)
    cleanup.push_async_callback(upstream.close, None)
    gate = EmbeddingGate(upstream)
    gate_server = grpc.aio.server()
    gate_server.add_generic_rpc_handlers((gate,))
    gate_port = gate_server.add_insecure_port("127.0.0.1:0")
    await gate_server.start()
    cleanup.push_async_callback(gate_server.stop, None)
    cleanup.callback(gate.released.set)  # runs first: held embedding calls end before the server stops

    documents = [Upload(f"notes{n}.txt", big_document(n)) for n in range(BIG_DOCUMENTS)]
    acked = [Upload(f"slides{n}.pdf", padded_pdf(n, UPLOAD_MIB * MIB)) for n in range(ACKED_UPLOADS)]
    held = [Upload(f"held{n}.pdf", padded_pdf(100 + n, UPLOAD_MIB * MIB)) for n in range(HELD_UPLOADS)]
    racing = [Upload(f"racing{n}.pdf", padded_pdf(200 + n, UPLOAD_MIB * MIB)) for n in range(RACING_UPLOADS)]
    first = start(database_url, f"127.0.0.1:{gate_port}", blob_dir)
    try:
        channel = create_channel(first.address, default_timeout=4 * WAIT_S)  # the held calls outlive the waits
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        user = (await stub.CreateUser(storage_pb2.CreateUserRequest(email="k@ptit.edu.vn", password_hash="h"))).user_id

        held_tasks = [asyncio.create_task(u.run(stub, user, hold_after=HELD_CHUNKS)) for u in held]
        await asyncio.gather(*(u.run(stub, user) for u in [*documents, *acked]))
        assert all(u.file_id for u in [*documents, *acked]), [(u.name, u.error) for u in [*documents, *acked]]

        # Mid-upload: the held uploads' chunks are written to the service's temp files, no ack yet.
        # (The acknowledged uploads are done, so the temp files left are the held uploads'.)
        def temp_sizes() -> list[int]:
            return sorted(p.stat().st_size for p in (blob_dir / "tmp").glob("*.part"))

        async def held_mid_upload() -> bool:
            return temp_sizes() == [HELD_CHUNKS * MIB] * HELD_UPLOADS

        await until(f"{HELD_UPLOADS} uploads with {HELD_CHUNKS} MiB written and not acknowledged", held_mid_upload)
        assert not any(t.done() for t in held_tasks)

        # Mid-ingestion: a job processing with some of its batches stored and the next one held.
        async def mid_ingestion() -> list[asyncpg.Record]:
            return await db.fetch(MID_INGESTION)

        await until("a job processing with 0 < chunks_done < chunks_total", mid_ingestion)

        # A few more uploads in full flight; whether each is acknowledged before the kill is open.
        racing_tasks = [asyncio.create_task(u.run(stub, user)) for u in racing]
        await until("the racing uploads streaming", lambda: asyncio.sleep(0, all(u.sent_chunks for u in racing)))

        assert not any(t.done() for t in held_tasks), "a held upload ended before the kill"
        first.process.kill()  # SIGKILL: no shutdown hooks, no flush
        first.process.wait()
        for u in held:
            u.release.set()
        # Calls on the dead connection normally fail at once; one that has not noticed within a
        # few seconds is ended by closing the channel (CANCELLED: not acknowledged either way).
        await asyncio.wait([*held_tasks, *racing_tasks], timeout=10)
        await channel.close(None)
        await asyncio.wait_for(asyncio.gather(*held_tasks, *racing_tasks), WAIT_S)
    finally:
        first.stop()

    # The kill landed mid-flight on both paths (the process is gone: this is the state it left).
    assert all(u.error is not None and not u.file_id for u in held)
    interrupted = await db.fetch(MID_INGESTION)
    assert interrupted, "the kill did not land mid-ingestion"
    assert gate.held >= 1
    for row in interrupted:
        assert row["stored"] == row["chunks_done"] >= EMBED_BATCH
    kept = {
        row["id"]: {
            (c["chunk_index"], c["id"])
            for c in await db.fetch("SELECT chunk_index, id FROM chunks WHERE document_id = $1", row["id"])
        }
        for row in interrupted
    }
    held_hashes = {u.sha256 for u in held}
    assert not await db.fetch("SELECT id FROM documents WHERE sha256 = any($1::text[])", list(held_hashes))

    second = start(database_url, embedding_service.address, blob_dir)
    try:
        channel = create_channel(second.address, default_timeout=SETTLE_S)
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        me = user_metadata(user)
        acknowledged = [u for u in [*documents, *acked, *racing] if u.file_id]
        for u in acknowledged:
            file = await stub.GetFile(storage_pb2.GetFileRequest(file_id=u.file_id), metadata=me)
            assert file.sha256 == u.sha256
        listed = await stub.ListFiles(storage_pb2.ListFilesRequest(page_size=100), metadata=me)
        assert {u.file_id for u in acknowledged} <= {f.file_id for f in listed.files}

        async def settle(file_id: str) -> storage_pb2.File:
            last = None
            async for update in stub.WatchFile(storage_pb2.GetFileRequest(file_id=file_id), metadata=me):
                last = update
            assert last is not None
            return last

        finals = await asyncio.wait_for(asyncio.gather(*(settle(f.file_id) for f in listed.files)), SETTLE_S)
        assert all(f.status == storage_pb2.FILE_STATUS_READY for f in finals), [(f.file_name, f.error) for f in finals]
        await channel.close(None)
    finally:
        second.stop()

    # Every acknowledged upload: its row and its blob, the blob's bytes hashing to what was sent.
    blobs = committed_blobs(blob_dir)
    for u in acknowledged:
        stored = await db.fetchrow(
            "SELECT d.sha256, d.blob_name, d.size_bytes FROM uploaded_files f JOIN documents d "
            "ON d.id = f.document_id WHERE f.id = $1 AND f.deleted_at IS NULL",
            uuid.UUID(u.file_id),
        )
        assert stored is not None, u.name
        assert stored["sha256"] == u.sha256 and stored["size_bytes"] == len(u.data)
        assert blobs[stored["blob_name"]] == u.sha256, u.name

    # Every row's blob matches; each document has one live file and one finished job; rows exist
    # only for bytes the test sent in full (racers may have committed without their ack arriving).
    rows = await db.fetch(
        "SELECT d.id, d.sha256, d.blob_name, d.chunks_total, d.status, "
        "(SELECT count(*) FROM uploaded_files f WHERE f.document_id = d.id AND f.deleted_at IS NULL) AS files, "
        "(SELECT array_agg(j.status) FROM ingestion_jobs j WHERE j.document_id = d.id) AS jobs "
        "FROM documents d"
    )
    full_hashes = {u.sha256 for u in [*documents, *acked, *racing]}
    assert {u.sha256 for u in acknowledged} <= {r["sha256"] for r in rows} <= full_hashes
    for row in rows:
        assert blobs[row["blob_name"]] == row["sha256"]
        assert row["files"] == 1 and row["jobs"] == ["done"], dict(row)
        assert row["status"] == storage_pb2.FILE_STATUS_READY
    # The held uploads left no committed data: no row (above), no committed blob of their bytes,
    # only their partial temp files; a committed blob without a row is an unacknowledged racer's.
    assert not held_hashes & set(blobs.values())
    assert set(blobs.values()) <= full_hashes
    assert set(blobs.values()) - {r["sha256"] for r in rows} <= {u.sha256 for u in racing if not u.file_id}

    # No chunk twice; every ready document has exactly chunks 0..total-1 of one model.
    assert not await db.fetch("SELECT document_id, chunk_index, model FROM chunks GROUP BY 1, 2, 3 HAVING count(*) > 1")
    per_document = await db.fetch(
        "SELECT d.id, d.chunks_total, count(c.id) AS stored, count(DISTINCT c.model) AS models, "
        "min(c.chunk_index) AS low, max(c.chunk_index) AS high "
        "FROM documents d LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id"
    )
    for row in per_document:
        assert row["chunks_total"] > 0 and row["models"] == 1, dict(row)
        assert row["stored"] == row["chunks_total"] == row["high"] + 1 and row["low"] == 0, dict(row)
    # The interrupted documents were resumed, not redone: the chunks stored before the kill remain.
    for document_id, before in kept.items():
        after = {
            (c["chunk_index"], c["id"])
            for c in await db.fetch("SELECT chunk_index, id FROM chunks WHERE document_id = $1", document_id)
        }
        assert before <= after and len(after) > len(before)
    # The gate's premise: each big document takes more than two full batches.
    big = {u.sha256 for u in documents}
    assert all(r["chunks_total"] > 2 * EMBED_BATCH for r in rows if r["sha256"] in big)
