"""Temp blobs of failed uploads (issue 18, "Smaller defects"): through the real gateway to the real
storage service, an upload whose body is longer than its Content-Length, or that breaks off, leaves
no temp file behind; abandoned temp files are swept while storage runs, not only at its start."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.gateway.conftest import bearer, serve_gateway
from tests.security.test_accounts import storage_server


@dataclass
class Stack:
    url: str
    client: httpx.AsyncClient
    temp_dir: Path


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with (
        storage_server(database_url, tmp_path) as (address, _),
        serve_gateway({"STORAGE_ADDR": address}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield Stack(url, client, tmp_path / "blobs" / "tmp")


async def eventually(condition: Callable[[], bool], limit_s: float = 20.0) -> bool:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _token(client: httpx.AsyncClient) -> str:
    reply = await client.post(
        "/v1/auth/register",
        json={"email": f"sv{uuid.uuid4().hex[:10]}@stu.ptit.edu.vn", "password": "mật khẩu đúng", "display_name": "SV"},
    )
    assert reply.status_code == 201, reply.text
    token: str = reply.json()["access_token"]
    return token


async def _raw(url: str, head: bytes, body: bytes) -> bytes:
    """One request written as-is on its own connection; what the server answered before closing."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def _temps(stack: Stack) -> list[Path]:
    return list(stack.temp_dir.glob("*.part"))


async def test_a_body_longer_than_its_content_length_leaves_no_temp_blob(stack: Stack) -> None:
    token = await _token(stack.client)
    body = ("Ngăn xếp và hàng đợi. " * 200).encode()
    for declared in range(50):  # 0..49 bytes declared, a few KiB sent
        head = (
            f"POST /v1/files?file_name=notes.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {declared}\r\n\r\n"
        ).encode()
        await _raw(stack.url, head, body)
    boundary = "b0undary"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="notes.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\n"
    ).encode() + body
    for cut in range(0, len(multipart), max(1, len(multipart) // 20)):  # multipart bodies ending early
        head = (
            f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {cut}\r\n\r\n"
        ).encode()
        await _raw(stack.url, head, multipart)
    assert await eventually(lambda: not _temps(stack)), [p.stat().st_size for p in _temps(stack)]
    # The gateway and storage still work, and stored nothing of those requests.
    listed = await stack.client.get("/v1/files", headers=bearer(token))
    assert listed.status_code == 200 and listed.json().get("files", []) == []


async def test_abandoned_temp_blobs_are_swept_while_storage_runs(database_url: str, tmp_path: Path) -> None:
    async with storage_server(database_url, tmp_path, BLOB_TEMP_SWEEP_S="0.1", BLOB_TEMP_STALE_S="60"):
        temp_dir = tmp_path / "blobs" / "tmp"
        fresh = temp_dir / "fresh.part"  # an upload still being written: kept
        fresh.write_bytes(b"x")
        an_hour_ago = time.time() - 3600
        for round_ in range(2):  # the second round shows a whole sweep passed over the fresh file
            abandoned = temp_dir / f"abandoned-{round_}.part"
            abandoned.write_bytes(b"")
            os.utime(abandoned, (an_hour_ago, an_hour_ago))
            assert await eventually(lambda: not abandoned.exists())  # noqa: B023 (awaited at once)
        assert fresh.exists()
