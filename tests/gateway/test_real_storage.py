"""Through the gateway to the real storage service (its own process, PostgreSQL via pgserver).

Ingestion workers are off (no embedding service needed): uploads stay queued, which is all the
gateway's part needs: the bytes arrive, the file is listed, its watch stream answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from studyassist.core.testing import ServiceProcess

from tests.gateway.conftest import bearer, serve_gateway


@pytest.fixture
async def client(real_storage: ServiceProcess, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve_gateway({"STORAGE_ADDR": real_storage.address}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=20) as http,
    ):
        yield http


async def _register(client: httpx.AsyncClient, email: str) -> str:
    reply = await client.post(
        "/v1/auth/register", json={"email": email, "password": "mật khẩu dài", "display_name": "A"}
    )
    assert reply.status_code == 201, reply.text
    token: str = reply.json()["access_token"]
    return token


async def test_accounts_sessions_and_files_through_real_storage(client: httpx.AsyncClient) -> None:
    token = await _register(client, "binh@example.edu.vn")
    again = await client.post(
        "/v1/auth/register", json={"email": "binh@example.edu.vn", "password": "mật khẩu dài", "display_name": "A"}
    )
    assert again.status_code == 409
    login = await client.post("/v1/auth/login", json={"email": "binh@example.edu.vn", "password": "mật khẩu dài"})
    assert login.status_code == 200
    me = await client.get("/v1/me", headers=bearer(token))
    assert me.status_code == 200 and me.json()["email"] == "binh@example.edu.vn" and me.json()["active"] is True

    created = await client.post("/v1/sessions", json={"title": "Cấu trúc dữ liệu"}, headers=bearer(token))
    assert created.status_code == 200, created.text
    sid = created.json()["session_id"]
    listed = await client.get("/v1/sessions", params={"page_size": "10"}, headers=bearer(token))
    assert [s["session_id"] for s in listed.json()["sessions"]] == [sid]

    other = await _register(client, "chi@example.edu.vn")
    assert (await client.get(f"/v1/sessions/{sid}", headers=bearer(other))).status_code == 404
    assert (await client.get("/v1/sessions", headers=bearer(other))).json()["sessions"] == []
    bad_id = await client.get("/v1/sessions/not-a-uuid", headers=bearer(token))
    assert bad_id.status_code in (400, 404) and bad_id.json()["code"] in ("INVALID_ARGUMENT", "NOT_FOUND")

    content = ("Thuật toán Dijkstra tìm đường đi ngắn nhất. " * 5000).encode()
    uploaded = await client.post(
        "/v1/files", params={"file_name": "dijkstra.txt"}, content=content, headers=bearer(token)
    )
    assert uploaded.status_code == 200, uploaded.text
    file = uploaded.json()
    assert file["file_name"] == "dijkstra.txt"
    assert file["size_bytes"] == str(len(content)) and file["sha256"] == hashlib.sha256(content).hexdigest()
    files = await client.get("/v1/files", headers=bearer(token))
    assert [f["file_id"] for f in files.json()["files"]] == [file["file_id"]]

    async with client.stream("GET", f"/v1/files/{file['file_id']}:watch", headers=bearer(token)) as stream:
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["file_id"] == file["file_id"]
                break
