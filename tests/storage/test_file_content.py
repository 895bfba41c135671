"""What a source viewer reads of a file: ListFileChunks (passages in order, paged, opened at a citation)
and DownloadFile (the original bytes), through the real storage service, PostgreSQL and embedding
model, and the download through the real gateway. Another user's file is NOT_FOUND for both."""

from __future__ import annotations

import io
import os
import urllib.parse
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import httpx
import pytest
from gateway.downloads import content_disposition
from google.api import httpbody_pb2
from studyassist.core.channels import user_metadata
from studyassist.storage.v1 import storage_pb2

from tests.gateway.conftest import bearer, serve_gateway
from tests.storage.conftest import StorageClient
from tests.storage.documents import make_docx, make_pdf, make_pptx

# Short passages, so a small text makes many of them.
SMALL_CHUNKS = {"CHUNK_TOKENS": "16", "CHUNK_OVERLAP_TOKENS": "0"}
SENTENCES = [f"Câu số {n}: thuật toán thứ {n} sắp xếp mảng theo cách riêng của nó." for n in range(40)]


@pytest.fixture
async def small_chunks(storage_factory: Callable[..., AsyncIterator[StorageClient]]) -> AsyncIterator[StorageClient]:
    async with storage_factory(**SMALL_CHUNKS) as client:  # type: ignore[attr-defined]
        yield client


async def ready(storage: StorageClient, user: str, name: str, data: bytes) -> storage_pb2.File:
    uploaded = await storage.upload(user, name, data)
    done = await storage.wait_done(user, uploaded.file_id)
    assert done.status == storage_pb2.FILE_STATUS_READY, done.error
    return done


async def list_chunks(
    storage: StorageClient, user: str, file_id: str, **fields: object
) -> storage_pb2.ListFileChunksResponse:
    request = storage_pb2.ListFileChunksRequest(file_id=file_id, **fields)  # type: ignore[arg-type]
    return await storage.stub.ListFileChunks(request, metadata=user_metadata(user))


async def download(
    storage: StorageClient, user: str, file_id: str
) -> tuple[list[httpbody_pb2.HttpBody], dict[str, object]]:
    call = storage.stub.DownloadFile(storage_pb2.DownloadFileRequest(file_id=file_id), metadata=user_metadata(user))
    pieces = [piece async for piece in call]
    return pieces, dict(await call.initial_metadata())


async def test_passages_in_order_paged_both_ways_and_opened_at_a_chunk(small_chunks: StorageClient) -> None:
    user = await small_chunks.new_user()
    file = await ready(small_chunks, user, "sap-xep.txt", "\n".join(SENTENCES).encode())
    total = file.chunks_total
    assert total > 12, "the text should make several pages of passages"

    # Every passage once, in order, walking the next tokens.
    seen: list[storage_pb2.FileChunk] = []
    token = ""
    pages = 0
    while True:
        page = await list_chunks(small_chunks, user, file.file_id, page_size=5, page_token=token)
        assert page.file.file_id == file.file_id and page.file.file_name == "sap-xep.txt"
        assert len(page.chunks) <= 5
        assert bool(page.previous_page_token) == (pages > 0)
        seen.extend(page.chunks)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert [c.chunk_index for c in seen] == list(range(total))
    assert len({c.chunk_id for c in seen}) == total
    # TXT has no pages or headings; the text is the file's, in order.
    assert all(c.page == 0 and c.heading == "" for c in seen)
    assert seen[0].text.startswith("Câu số 0") and "Câu số 39" in " ".join(c.text for c in seen[-4:])
    assert all(c.char_end > c.char_start for c in seen)

    # The previous token of the third page gives the second page back.
    second = await list_chunks(small_chunks, user, file.file_id, page_size=5)
    second = await list_chunks(small_chunks, user, file.file_id, page_size=5, page_token=second.next_page_token)
    third = await list_chunks(small_chunks, user, file.file_id, page_size=5, page_token=second.next_page_token)
    back = await list_chunks(small_chunks, user, file.file_id, page_size=5, page_token=third.previous_page_token)
    assert [c.chunk_id for c in back.chunks] == [c.chunk_id for c in second.chunks]

    # Opened at a cited chunk: the page holds it, with a few passages before it for context.
    cited = seen[10]
    around = await list_chunks(small_chunks, user, file.file_id, page_size=8, chunk_id=cited.chunk_id)
    indexes = [c.chunk_index for c in around.chunks]
    assert cited.chunk_id in [c.chunk_id for c in around.chunks]
    assert indexes == list(range(8, 16))  # 10 - 8 // 4
    assert around.previous_page_token and around.next_page_token
    # Near the start, the page simply starts at the first passage.
    first = await list_chunks(small_chunks, user, file.file_id, page_size=8, chunk_id=seen[1].chunk_id)
    assert first.chunks[0].chunk_index == 0 and not first.previous_page_token


async def test_pptx_slides_and_docx_headings_are_where_the_parser_found_them(storage: StorageClient) -> None:
    user = await storage.new_user()
    slides = await ready(
        storage,
        user,
        "bai-giang.pptx",
        make_pptx(
            [
                ("Giới thiệu", "Môn học mạng máy tính."),
                ("Tầng giao vận", "TCP bắt tay ba bước."),
                ("Tầng mạng", "Định tuyến gói tin IP."),
            ]
        ),
    )
    listed = await list_chunks(storage, user, slides.file_id)
    assert [(c.page, c.heading) for c in listed.chunks] == [(1, "Giới thiệu"), (2, "Tầng giao vận"), (3, "Tầng mạng")]
    # Opened at slide 2: its passage comes first.
    at_slide = await list_chunks(storage, user, slides.file_id, page=2)
    assert at_slide.chunks[0].page == 2 and "bắt tay ba bước" in at_slide.chunks[0].text
    with pytest.raises(grpc.aio.AioRpcError) as no_slide:
        await list_chunks(storage, user, slides.file_id, page=9)
    assert no_slide.value.code() == grpc.StatusCode.NOT_FOUND

    notes = await ready(
        storage,
        user,
        "ghi-chu.docx",
        make_docx(
            [
                ("h1", "Chương 1"),
                ("h2", "Ngăn xếp"),
                ("p", "Vào sau ra trước."),
                ("h2", "Hàng đợi"),
                ("p", "Vào trước ra trước."),
            ]
        ),
    )
    headings = [c.heading for c in (await list_chunks(storage, user, notes.file_id)).chunks]
    assert "Chương 1 > Ngăn xếp" in headings and "Chương 1 > Hàng đợi" in headings

    pdf = await ready(storage, user, "slides.pdf", make_pdf(["Page one text", "Page two text", "Page three text"]))
    assert [c.page for c in (await list_chunks(storage, user, pdf.file_id)).chunks] == [1, 2, 3]


async def test_download_returns_the_same_bytes_in_pieces_with_type_and_name(storage: StorageClient) -> None:
    user = await storage.new_user()
    # A DOCX with 2.5 MB of incompressible media: several pieces, and nothing heavy to ingest.
    package = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(make_docx([("p", "Tài liệu có ảnh.")]))) as base,
        zipfile.ZipFile(package, "w") as out,
    ):
        for item in base.infolist():
            out.writestr(item, base.read(item))
        out.writestr("word/media/image1.bin", os.urandom(2_500_000))
    data = package.getvalue()
    name = "Bài giảng “Mạng” tuần 1.docx"
    uploaded = await storage.upload(user, name, data)

    pieces, initial = await download(storage, user, uploaded.file_id)
    assert b"".join(p.data for p in pieces) == data
    assert len(pieces) >= 3 and all(len(p.data) <= 1024 * 1024 for p in pieces)
    assert pieces[0].content_type == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert all(p.content_type == "" for p in pieces[1:])
    assert initial["x-file-name-bin"] == name.encode()

    text = await storage.upload(user, "ghi-chu.md", "# Tiêu đề\n\nNội dung.".encode())
    pieces, _ = await download(storage, user, text.file_id)
    assert pieces[0].content_type == "text/markdown; charset=utf-8"
    assert b"".join(p.data for p in pieces) == "# Tiêu đề\n\nNội dung.".encode()


async def test_another_users_or_a_deleted_file_is_not_found_never_its_content(storage: StorageClient) -> None:
    owner = await storage.new_user()
    stranger = await storage.new_user()
    file = await ready(storage, owner, "rieng.txt", "Bí mật của sinh viên A.".encode())
    chunk_id = (await list_chunks(storage, owner, file.file_id)).chunks[0].chunk_id

    async def code_of(user: str, call: str, **fields: object) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            if call == "list":
                await list_chunks(storage, user, **fields)  # type: ignore[arg-type]
            else:
                await download(storage, user, **fields)  # type: ignore[arg-type]
        assert "Bí mật" not in (failure.value.details() or "")
        return failure.value.code()

    assert await code_of(stranger, "list", file_id=file.file_id) == grpc.StatusCode.NOT_FOUND
    assert await code_of(stranger, "list", file_id=file.file_id, chunk_id=chunk_id) == grpc.StatusCode.NOT_FOUND
    assert await code_of(stranger, "download", file_id=file.file_id) == grpc.StatusCode.NOT_FOUND
    # The stranger's own file does not open a door to the owner's chunk either.
    theirs = await ready(storage, stranger, "cua-toi.txt", "Ghi chép của sinh viên B.".encode())
    assert await code_of(stranger, "list", file_id=theirs.file_id, chunk_id=chunk_id) == grpc.StatusCode.NOT_FOUND

    # Bad input is the caller's error, never INTERNAL.
    assert await code_of(owner, "list", file_id="not-an-id") == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(owner, "download", file_id="not-an-id") == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(owner, "list", file_id=file.file_id, page_token="%%%") == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(owner, "list", file_id=file.file_id, chunk_id="x") == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(owner, "list", file_id=file.file_id, page=-1) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(owner, "list", file_id=file.file_id, page_size=-1) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(owner, "list", file_id=str(uuid.uuid4())) == grpc.StatusCode.NOT_FOUND

    await storage.stub.DeleteFile(storage_pb2.DeleteFileRequest(file_id=file.file_id), metadata=user_metadata(owner))
    assert await code_of(owner, "list", file_id=file.file_id) == grpc.StatusCode.NOT_FOUND
    assert await code_of(owner, "download", file_id=file.file_id) == grpc.StatusCode.NOT_FOUND


async def test_download_and_passages_over_http_through_the_gateway(storage: StorageClient, tmp_path: Path) -> None:
    async with (
        serve_gateway({"STORAGE_ADDR": storage.address}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):

        async def register() -> str:
            reply = await http.post(
                "/v1/auth/register",
                json={
                    "email": f"v{uuid.uuid4().hex[:8]}@example.edu.vn",
                    "password": "mật khẩu dài",
                    "display_name": "A",
                },
            )
            assert reply.status_code == 201, reply.text
            token: str = reply.json()["access_token"]
            return token

        owner, stranger = await register(), await register()
        pdf = make_pdf(["Trang mot: mang may tinh", "Trang hai: giao thuc TCP"])
        name = 'Mạng "máy tính"\r\nX-Evil: 1;.pdf'
        uploaded = await http.post("/v1/files", params={"file_name": name}, content=pdf, headers=bearer(owner))
        assert uploaded.status_code == 200, uploaded.text
        file_id = uploaded.json()["file_id"]

        got = await http.get(f"/v1/files/{file_id}:download", headers={**bearer(owner), "Accept-Encoding": "gzip"})
        assert got.status_code == 200
        assert got.content == pdf
        assert got.headers["content-type"] == "application/pdf"
        assert got.headers["x-content-type-options"] == "nosniff"
        assert "content-encoding" not in got.headers  # a PDF is not compressed again
        assert "x-evil" not in got.headers
        disposition = got.headers["content-disposition"]
        assert disposition.startswith("attachment; ")
        stored_name = uploaded.json()["file_name"]
        assert urllib.parse.unquote(disposition.split("filename*=UTF-8''", 1)[1]) == stored_name
        assert disposition.split('filename="', 1)[1].split('"', 1)[0].isascii()

        # The token only in a header: a download link carrying it in the query is refused.
        token_in_url = await http.get(f"/v1/files/{file_id}:download", params={"access_token": owner})
        assert token_in_url.status_code == 401

        stranger_download = await http.get(f"/v1/files/{file_id}:download", headers=bearer(stranger))
        assert stranger_download.status_code == 404 and b"Trang" not in stranger_download.content
        stranger_list = await http.get(f"/v1/files/{file_id}/chunks", headers=bearer(stranger))
        assert stranger_list.status_code == 404 and "Trang" not in stranger_list.text

        listed = await http.get(f"/v1/files/{file_id}/chunks", params={"page_size": "10"}, headers=bearer(owner))
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert body["file"]["file_id"] == file_id and "chunks" in body and "next_page_token" in body
        bad = await http.get(f"/v1/files/{file_id}/chunks", params={"page_token": "!!"}, headers=bearer(owner))
        assert bad.status_code == 400


def test_content_disposition_keeps_any_name_inside_the_header() -> None:
    assert content_disposition("notes.pdf") == "attachment; filename=\"notes.pdf\"; filename*=UTF-8''notes.pdf"
    header = content_disposition('Bài 1 "TCP"\r\nSet-Cookie: x=1;.pdf')
    assert "\r" not in header and "\n" not in header
    fallback = header.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback.isascii() and '"' not in fallback and ";" in fallback  # quoted, so harmless
    assert urllib.parse.unquote(header.split("filename*=UTF-8''", 1)[1]) == 'Bài 1 "TCP"Set-Cookie: x=1;.pdf'
    assert content_disposition("\x00\x01") == "attachment; filename=\"download\"; filename*=UTF-8''download"
    assert "%2F" not in content_disposition("a/b.pdf") and "a_b.pdf" in content_disposition("a/b.pdf")
