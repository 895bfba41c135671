"""Per-user quotas (issue 18, "Smaller defects"), through the real gateway to the real storage service:
an upload past the student's byte quota is 413 QUOTA_BYTES, past the file-count quota 403 QUOTA_FILES
(waiting does not help, deleting does: not 429), the quota in the message and in the reason's values;
the same bytes merged into a live file take nothing more; two uploads at once cannot both take the
last place; a refused upload leaves nothing behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import bearer, serve_gateway
from tests.security.test_accounts import storage_server


@pytest.fixture
def mesh(database_url: str, tmp_path: Path) -> Callable[..., object]:
    @asynccontextmanager
    async def start(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        async with (
            storage_server(database_url, tmp_path, **env) as (address, _),
            serve_gateway({"STORAGE_ADDR": address}, tmp_path) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as client,
        ):
            yield client

    return start


async def _token(client: httpx.AsyncClient) -> dict[str, str]:
    reply = await client.post(
        "/v1/auth/register",
        json={"email": f"sv{uuid.uuid4().hex[:10]}@stu.ptit.edu.vn", "password": "mật khẩu đúng", "display_name": "SV"},
    )
    assert reply.status_code == 201, reply.text
    return bearer(reply.json()["access_token"])


def _text(size: int) -> bytes:
    """Distinct text of about ``size`` bytes (distinct bytes: no merge)."""
    line = f"Ghi chú {uuid.uuid4().hex}: ngăn xếp, hàng đợi.\n".encode()
    return (line * (size // len(line) + 1))[:size]


async def _upload(
    client: httpx.AsyncClient, auth: dict[str, str], data: bytes, name: str = "notes.txt"
) -> httpx.Response:
    return await client.post("/v1/files", params={"file_name": name}, content=data, headers=auth)


async def _names(client: httpx.AsyncClient, auth: dict[str, str]) -> list[str]:
    listed = await client.get("/v1/files", headers=auth)
    return sorted(f["file_name"] for f in listed.json().get("files", []))


async def test_past_the_byte_quota_is_413_with_the_quota(mesh: Callable[..., object], tmp_path: Path) -> None:
    async with mesh(USER_QUOTA_BYTES="1500000") as client:  # type: ignore[attr-defined]
        auth = await _token(client)
        first = _text(1_000_000)
        assert (await _upload(client, auth, first, "a.txt")).status_code == 200
        refused = await _upload(client, auth, _text(600_000), "b.txt")
        assert refused.status_code == 413, refused.text
        body = refused.json()
        assert body["reason"] == "QUOTA_BYTES" and "1500000" in body["message"]
        assert body["args"]["limit"] == "1500000" and body["args"]["limit_mb"] == "1.5"
        assert body["args"]["used"] == "1000000"
        assert await _names(client, auth) == ["a.txt"]
        assert not list((tmp_path / "blobs" / "tmp").glob("*.part"))
        # The same bytes again merge into the live file: no more space, so no refusal.
        again = await _upload(client, auth, first, "a-copy.txt")
        assert again.status_code == 200 and again.json()["merged"] is True
        # Deleting makes room; another student's quota is their own.
        file_id = (await client.get("/v1/files", headers=auth)).json()["files"][0]["file_id"]
        assert (await client.delete(f"/v1/files/{file_id}", headers=auth)).status_code == 200
        assert (await _upload(client, auth, _text(600_000), "b.txt")).status_code == 200
        other = await _token(client)
        assert (await _upload(client, other, _text(1_400_000), "c.txt")).status_code == 200


async def test_past_the_file_quota_is_403_with_the_quota(mesh: Callable[..., object]) -> None:
    async with mesh(USER_QUOTA_FILES="2") as client:  # type: ignore[attr-defined]
        auth = await _token(client)
        for name in ("a.txt", "b.txt"):
            assert (await _upload(client, auth, _text(1000), name)).status_code == 200
        refused = await _upload(client, auth, _text(1000), "c.txt")
        assert refused.status_code == 403, refused.text
        body = refused.json()
        assert body["reason"] == "QUOTA_FILES" and body["args"] == {"limit": "2", "used": "2"}
        assert "quota of 2" in body["message"]
        assert await _names(client, auth) == ["a.txt", "b.txt"]


async def test_uploads_at_once_cannot_all_take_the_last_place(mesh: Callable[..., object]) -> None:
    async with mesh(USER_QUOTA_FILES="1") as client:  # type: ignore[attr-defined]
        auth = await _token(client)
        replies = await asyncio.gather(*(_upload(client, auth, _text(50_000), f"{i}.txt") for i in range(6)))
        assert sorted(r.status_code for r in replies) == [200] + [403] * 5
        assert len(await _names(client, auth)) == 1


def test_quota_settings_are_validated() -> None:
    from storage.config import Settings
    from studyassist.core.config import ConfigError

    base = {"DATABASE_URL": "postgresql://unused/db", "STORAGE_PORT": "0"}
    settings = Settings.from_env(base)
    assert settings.user_quota_bytes >= 100 * settings.upload_max_bytes and settings.user_quota_files >= 1000
    for bad in ({"USER_QUOTA_BYTES": "0"}, {"USER_QUOTA_FILES": "lots"}):
        with pytest.raises(ConfigError):
            Settings.from_env({**base, **bad})
