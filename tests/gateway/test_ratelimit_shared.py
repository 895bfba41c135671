"""Two gateways sharing Redis hold one user to exactly the limit under concurrent requests.

Real parts: two gateway apps on uvicorn (real HTTP), the real Redis, one storage backend behind both."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx

from tests.gateway.backend import start_storage
from tests.gateway.conftest import bearer, serve_gateway

LIMIT = 120  # a minute's worth; the moving window admits this many and no more


async def test_two_gateways_admit_exactly_the_limit_of_one_user(redis_url: str, tmp_path: Path) -> None:
    storage, _, storage_addr = await start_storage()
    env = {
        "STORAGE_ADDR": storage_addr,
        "REDIS_URL": redis_url,
        "RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "RATE_LIMIT_IP_PER_MINUTE": "0",
    }
    try:
        async with (
            serve_gateway(env, tmp_path / "a") as first_url,
            serve_gateway(env, tmp_path / "b") as second_url,
            httpx.AsyncClient(base_url=first_url, timeout=30) as first,
            httpx.AsyncClient(base_url=second_url, timeout=30) as second,
        ):
            email = f"u{uuid.uuid4().hex[:10]}@example.edu.vn"
            registered = await first.post(
                "/v1/auth/register", json={"email": email, "password": "correct horse", "display_name": "Sinh viên"}
            )
            assert registered.status_code == 201, registered.text
            headers = bearer(registered.json()["access_token"])
            at_once = asyncio.Semaphore(8)  # 8 requests in flight, as in the fault run

            async def get(client: httpx.AsyncClient) -> int:
                async with at_once:
                    return (await client.get("/v1/sessions", headers=headers)).status_code

            codes = await asyncio.gather(*(get(first if i % 2 else second) for i in range(2 * LIMIT + 40)))
            assert set(codes) == {200, 429}
            assert codes.count(200) == LIMIT
            limited = await second.get("/v1/sessions", headers=headers)
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    finally:
        await storage.stop(0)
