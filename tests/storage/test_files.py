"""Uploads, ingestion and hybrid search through the real service, PostgreSQL and embedding model."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from storage.embeddings import EmbeddingClient
from studyassist.core.channels import stream_unary_response, user_metadata
from studyassist.core.testing import ServiceProcess
from studyassist.storage.v1 import storage_pb2

from tests.storage.conftest import StorageClient
from tests.storage.documents import make_pdf, make_pptx, zip_bomb_docx

LECTURE = (
    "Chương 1. Cấu trúc dữ liệu và giải thuật.\n\n"
    "Danh sách liên kết đơn gồm các nút; mỗi nút lưu dữ liệu và con trỏ tới nút kế tiếp.\n\n"
    "Ngăn xếp (stack) hoạt động theo nguyên tắc vào sau ra trước.\n\n"
    "Hàng đợi (queue) hoạt động theo nguyên tắc vào trước ra trước.\n"
)


Embed = Callable[[str], Awaitable[list[float]]]


@pytest.fixture
async def embed(embedding_service: ServiceProcess) -> AsyncIterator[Embed]:
    """Query vectors from the real embedding service, as chat would send them."""
    client = EmbeddingClient(embedding_service.address)

    async def vector(text: str) -> list[float]:
        vectors, _ = await client.embed([text])
        return [float(v) for v in vectors[0]]

    yield vector
    await client.close()


async def search(
    storage: StorageClient,
    user: str,
    query: str,
    *,
    vector: list[float] | None = None,
    file_ids: list[str] | None = None,
    top_k: int = 0,
) -> list[storage_pb2.ChunkHit]:
    request = storage_pb2.SearchChunksRequest(
        query=query, query_embedding=vector or [], file_ids=file_ids or [], top_k=top_k
    )
    result = await storage.stub.SearchChunks(request, metadata=user_metadata(user))
    return list(result.hits)


async def test_upload_ingest_and_hybrid_search_accent_insensitive(storage: StorageClient, embed: Embed) -> None:
    user = await storage.new_user()
    uploaded = await storage.upload(user, "ctdl/bai1.md", LECTURE.encode(), chunk_size=40)
    assert uploaded.file_name == "bai1.md" and uploaded.kind == storage_pb2.FILE_KIND_MD
    assert uploaded.sha256 == hashlib.sha256(LECTURE.encode()).hexdigest()
    assert uploaded.size_bytes == len(LECTURE.encode())
    done = await storage.wait_done(user, uploaded.file_id)
    assert done.status == storage_pb2.FILE_STATUS_READY, done.error
    assert done.chunks_total >= 1 and done.chunks_done == done.chunks_total

    # Typed without diacritics, the words still match (full-text over folded text).
    hits = await search(storage, user, "cau truc du lieu")
    assert hits and "Cấu trúc dữ liệu" in hits[0].text and hits[0].text_score > 0
    assert hits[0].file_id == uploaded.file_id and hits[0].file_name == "bai1.md"
    # Vector plus text, fused: the hit carries both scores.
    query = "ngăn xếp vào sau ra trước"
    fused = await search(storage, user, query, vector=await embed(query))
    assert fused and fused[0].vector_score > 0 and fused[0].text_score > 0
    # Words that match nothing: no keyword hit (the query's own vector still finds the nearest passage).
    assert all(h.text_score == 0 for h in await search(storage, user, "zzzqqq"))

    listed = await storage.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=user_metadata(user))
    assert [f.file_id for f in listed.files] == [uploaded.file_id]


async def test_pdf_pages_and_pptx_slides_reach_search_hits(storage: StorageClient) -> None:
    user = await storage.new_user()
    pdf = await storage.upload(user, "slides.bin", make_pdf(["Intro to networks", "The TCP handshake uses SYN ACK"]))
    deck = await storage.upload(user, "deck", make_pptx([("OSI", "seven layers"), ("Routing", "Dijkstra shortest")]))
    assert pdf.kind == storage_pb2.FILE_KIND_PDF and deck.kind == storage_pb2.FILE_KIND_PPTX
    for file in (pdf, deck):
        assert (await storage.wait_done(user, file.file_id)).status == storage_pb2.FILE_STATUS_READY
    (tcp,) = [h for h in await search(storage, user, "tcp handshake") if h.file_id == pdf.file_id][:1]
    assert tcp.page == 2
    (routing,) = [h for h in await search(storage, user, "dijkstra") if h.file_id == deck.file_id][:1]
    assert routing.page == 2 and routing.heading == "Routing"
    # Limiting to one file keeps the other out.
    only_pdf = await search(storage, user, "seven layers handshake", file_ids=[pdf.file_id])
    assert only_pdf and {h.file_id for h in only_pdf} == {pdf.file_id}


async def test_same_bytes_again_reuse_the_document(storage: StorageClient, database_url: str) -> None:
    import asyncpg

    user = await storage.new_user()
    first = await storage.upload(user, "a.txt", LECTURE.encode())
    await storage.wait_done(user, first.file_id)
    again = await storage.upload(user, "b.txt", LECTURE.encode())
    assert again.file_id == first.file_id and again.status == storage_pb2.FILE_STATUS_READY
    # Deleted, then uploaded again: a new file over the same chunks, with no new embedding work.
    await storage.stub.DeleteFile(storage_pb2.DeleteFileRequest(file_id=first.file_id), metadata=user_metadata(user))
    assert not await search(storage, user, "cau truc")
    revived = await storage.upload(user, "c.txt", LECTURE.encode())
    assert revived.file_id != first.file_id and revived.status == storage_pb2.FILE_STATUS_READY
    assert await search(storage, user, "cau truc")
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM documents") == 1
        chunk_count = await conn.fetchval("SELECT count(*) FROM chunks")
        assert chunk_count == revived.chunks_total
        assert (
            await conn.fetchval("SELECT count(DISTINCT (document_id, chunk_index, model)) FROM chunks") == chunk_count
        )
    finally:
        await conn.close()


async def test_size_cap_is_enforced_while_streaming(storage_factory: object) -> None:
    async with storage_factory(UPLOAD_MAX_BYTES="100000") as storage:  # type: ignore[operator]
        user = await storage.new_user()
        sent = 0

        async def endless() -> object:
            nonlocal sent
            yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name="big.txt"))
            for _ in range(10_000):  # 640 MB if it were all read
                sent += 1
                yield storage_pb2.UploadFileRequest(chunk=b"a" * 65536)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream_unary_response(storage.stub.UploadFile(endless(), metadata=user_metadata(user)))  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in (err.value.details() or "")
        assert sent < 100  # refused long before the end
        # Just under the cap is accepted.
        ok = await storage.upload(user, "ok.txt", b"b " * 49_000)
        assert ok.size_bytes == 98_000


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        ("photo.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40, "unsupported file type"),
        ("archive.docx", b"PK\x03\x04" + b"\0" * 5000, "unsupported file type"),
        ("binary.md", "xin chào".encode() + b"\x00\x01\x02" * 10, "unsupported file type"),
        ("latin1.txt", "Tiếng Việt".encode("utf-16"), "unsupported file type"),
        ("empty.txt", b"", "empty"),
    ],
)
async def test_bad_types_are_refused_by_content(storage: StorageClient, name: str, data: bytes, why: str) -> None:
    user = await storage.new_user()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await storage.upload(user, name, data)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in (err.value.details() or "")


async def test_upload_protocol_errors(storage: StorageClient) -> None:
    user = user_metadata(await storage.new_user())

    async def no_metadata() -> object:
        yield storage_pb2.UploadFileRequest(chunk=b"hello")

    async def oversized_chunk() -> object:
        yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name="x.txt"))
        yield storage_pb2.UploadFileRequest(chunk=b"a" * (1024 * 1024 + 1))

    for requests in (no_metadata(), oversized_chunk()):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await storage.stub.UploadFile(requests, metadata=user)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_bomb_and_truncated_pdf_end_as_failed_jobs(storage: StorageClient) -> None:
    user = await storage.new_user()
    bomb = await storage.upload(user, "notes.docx", zip_bomb_docx())
    broken = await storage.upload(user, "book.pdf", make_pdf(["page one", "page two"])[:-250])
    assert bomb.kind == storage_pb2.FILE_KIND_DOCX and broken.kind == storage_pb2.FILE_KIND_PDF
    failed_bomb = await storage.wait_done(user, bomb.file_id)
    failed_pdf = await storage.wait_done(user, broken.file_id)
    assert failed_bomb.status == storage_pb2.FILE_STATUS_FAILED and "bomb" in failed_bomb.error
    assert failed_pdf.status == storage_pb2.FILE_STATUS_FAILED and "truncated" in failed_pdf.error
    # The service is still up and answering.
    assert (
        await storage.stub.GetFile(storage_pb2.GetFileRequest(file_id=bomb.file_id), metadata=user_metadata(user))
    ).error


async def test_user_b_canary_never_reaches_user_a(storage: StorageClient, embed: Embed) -> None:
    alice, bob = await storage.new_user(), await storage.new_user()
    a, b = user_metadata(alice), user_metadata(bob)
    canary = "canarybob7 bí mật của Bình"
    bob_file = await storage.upload(bob, "bob.txt", f"{canary}\n{LECTURE}".encode())
    await storage.wait_done(bob, bob_file.file_id)
    bob_session = await storage.stub.CreateSession(storage_pb2.CreateSessionRequest(title=canary), metadata=b)
    await storage.stub.AppendMessages(
        storage_pb2.AppendMessagesRequest(
            session_id=bob_session.session_id,
            messages=[storage_pb2.Message(role=storage_pb2.ROLE_USER, content=canary)],
        ),
        metadata=b,
    )
    # Alice has her own, similar material.
    alice_file = await storage.upload(alice, "alice.txt", LECTURE.encode() + b"\nalice")
    await storage.wait_done(alice, alice_file.file_id)
    await storage.stub.CreateSession(storage_pb2.CreateSessionRequest(title="mine"), metadata=a)

    seen: list[str] = []
    seen.append(str(await storage.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=a)))
    seen.append(str(await storage.stub.ListSessions(storage_pb2.ListSessionsRequest(), metadata=a)))
    seen.append(
        str(await storage.stub.SearchMessages(storage_pb2.SearchMessagesRequest(query="canarybob7"), metadata=a))
    )
    for query in ("canarybob7", "bi mat cua Binh", "cấu trúc dữ liệu"):
        seen.append(str(await search(storage, alice, query)))
        seen.append(str(await search(storage, alice, query, vector=await embed(query))))
    seen.append(str(await storage.stub.GetUser(storage_pb2.GetUserRequest(), metadata=a)))
    not_found: list[Awaitable[object]] = [
        storage.stub.GetFile(storage_pb2.GetFileRequest(file_id=bob_file.file_id), metadata=a),
        storage.stub.DeleteFile(storage_pb2.DeleteFileRequest(file_id=bob_file.file_id), metadata=a),
        storage.stub.GetSession(storage_pb2.GetSessionRequest(session_id=bob_session.session_id), metadata=a),
        storage.stub.UpdateSession(
            storage_pb2.UpdateSessionRequest(session_id=bob_session.session_id, title="x"), metadata=a
        ),
        storage.stub.ListMessages(storage_pb2.ListMessagesRequest(session_id=bob_session.session_id), metadata=a),
        storage.stub.AppendMessages(
            storage_pb2.AppendMessagesRequest(
                session_id=bob_session.session_id,
                messages=[storage_pb2.Message(role=storage_pb2.ROLE_USER, content="x")],
            ),
            metadata=a,
        ),
        storage.stub.DeleteSession(storage_pb2.DeleteSessionRequest(session_id=bob_session.session_id), metadata=a),
        storage.stub.SearchChunks(
            storage_pb2.SearchChunksRequest(query="canarybob7", file_ids=[bob_file.file_id]), metadata=a
        ),
    ]
    for call in not_found:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        seen.append(str(err.value.details()))
    with pytest.raises(grpc.aio.AioRpcError) as watch:
        async for update in storage.stub.WatchFile(storage_pb2.GetFileRequest(file_id=bob_file.file_id), metadata=a):
            seen.append(str(update))
    assert watch.value.code() == grpc.StatusCode.NOT_FOUND
    everything = "\n".join(seen)
    assert "canarybob7" not in everything and "Bình" not in everything and bob_file.file_id not in everything
    # Bob's things are untouched and still his.
    assert (await storage.stub.GetFile(storage_pb2.GetFileRequest(file_id=bob_file.file_id), metadata=b)).file_id
    assert "canarybob7" in str(await search(storage, bob, "canarybob7"))
    # Identical bytes from two users are two documents: no sharing across users.
    shared = await storage.upload(alice, "copy.txt", f"{canary}\n{LECTURE}".encode())
    assert shared.file_id != bob_file.file_id
    assert str(uuid.UUID(shared.file_id))


async def test_document_set_version_tracks_ready_files(storage: StorageClient) -> None:
    user = await storage.new_user()
    me = user_metadata(user)
    empty = (await storage.stub.GetDocumentSetVersion(storage_pb2.GetDocumentSetVersionRequest(), metadata=me)).version
    file = await storage.upload(user, "a.txt", LECTURE.encode())
    await storage.wait_done(user, file.file_id)
    one = (await storage.stub.GetDocumentSetVersion(storage_pb2.GetDocumentSetVersionRequest(), metadata=me)).version
    assert one != empty
    await storage.stub.DeleteFile(storage_pb2.DeleteFileRequest(file_id=file.file_id), metadata=me)
    gone = (await storage.stub.GetDocumentSetVersion(storage_pb2.GetDocumentSetVersionRequest(), metadata=me)).version
    assert gone == empty


async def test_files_page_newest_first_without_deleted(storage: StorageClient) -> None:
    user = await storage.new_user()
    me = user_metadata(user)
    uploaded = [(await storage.upload(user, f"f{i}.txt", f"{i} {LECTURE}".encode())).file_id for i in range(4)]
    await storage.stub.DeleteFile(storage_pb2.DeleteFileRequest(file_id=uploaded[1]), metadata=me)
    seen: list[str] = []
    token = ""
    while True:
        page = await storage.stub.ListFiles(storage_pb2.ListFilesRequest(page_size=2, page_token=token), metadata=me)
        assert len(page.files) <= 2
        seen += [f.file_id for f in page.files]
        token = page.next_page_token
        if not token:
            break
    assert seen == [uploaded[3], uploaded[2], uploaded[0]]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await storage.stub.ListFiles(storage_pb2.ListFilesRequest(page_token="garbage!"), metadata=me)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_embedding_outage_retries_with_backoff_then_fails_with_reason(storage_factory: object) -> None:
    # Nothing listens on port 9: every attempt fails as UNAVAILABLE; two attempts, then failed.
    async with storage_factory(EMBEDDING_ADDR="127.0.0.1:9", INGEST_MAX_ATTEMPTS="2") as storage:  # type: ignore[operator]
        user = await storage.new_user()
        file = await storage.upload(user, "a.txt", LECTURE.encode())
        seen: list[storage_pb2.FileStatus] = []
        async for update in storage.stub.WatchFile(
            storage_pb2.GetFileRequest(file_id=file.file_id), metadata=user_metadata(user), timeout=60
        ):
            seen.append(update.status)
        assert seen[-1] == storage_pb2.FILE_STATUS_FAILED
        assert storage_pb2.FILE_STATUS_PROCESSING in seen
        assert update.error.startswith("gave up after 2 attempts: embedding service: UNAVAILABLE")
