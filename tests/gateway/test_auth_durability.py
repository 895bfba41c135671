"""Sign-in survives Redis (issue 23): a private redis-server, started by the test, killed and frozen
(SIGSTOP) while students register, sign in and refresh through the gateway and the real storage
service; after a Redis restart the refresh tokens issued before it still work.

Redis used to hold the refresh tokens: with it down or frozen, sign-in answered 503 "token store
unavailable", and a restart signed everyone out. Now storage keeps them (PostgreSQL) and Redis
only holds the sign-in backoff's counters, which fall back to local ones.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from studyassist.core.testing import ServiceProcess, in_ci

from tests.gateway.conftest import bearer, free_port, serve_gateway

PASSWORD = "mật khẩu bền vững"


class PrivateRedis:
    """A redis-server of this test's own, on a free port, with nothing persisted."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stored_keys(self) -> list[bytes]:
        return list(redis.Redis(port=self.port).scan_iter("*"))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if in_ci():
            pytest.fail("redis-server is required under CI=true")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.signal(signal.SIGCONT)
        server.kill()


@pytest.fixture
async def client(
    real_storage: ServiceProcess, private_redis: PrivateRedis, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    env = {"STORAGE_ADDR": real_storage.address, "REDIS_URL": private_redis.url}
    async with serve_gateway(env, tmp_path) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield http


async def _register(client: httpx.AsyncClient) -> dict[str, str]:
    email = f"sv{uuid.uuid4().hex[:10]}@stu.ptit.edu.vn"
    reply = await client.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": "SV"})
    assert reply.status_code == 201, reply.text
    return {"email": email, "refresh": reply.json()["refresh_token"], "access": reply.json()["access_token"]}


async def _login(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    reply = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    return {"email": email, "refresh": reply.json()["refresh_token"], "access": reply.json()["access_token"]}


async def _mistype(client: httpx.AsyncClient, email: str) -> None:
    """A wrong password: the sign-in backoff counts it (in Redis while Redis answers)."""
    reply = await client.post("/v1/auth/login", json={"email": email, "password": "gõ nhầm mật khẩu"})
    assert reply.status_code == 401, reply.text


async def _refresh(client: httpx.AsyncClient, account: dict[str, str]) -> None:
    reply = await client.post("/v1/auth/refresh", json={"refresh_token": account["refresh"]})
    assert reply.status_code == 200, reply.text
    account["refresh"], account["access"] = reply.json()["refresh_token"], reply.json()["access_token"]
    assert (await client.get("/v1/me", headers=bearer(account["access"]))).status_code == 200


async def _sign_in_burst(client: httpx.AsyncClient, accounts: list[dict[str, str]]) -> None:
    """Registrations, sign-ins and refreshes at once, each of which must succeed."""
    await asyncio.gather(
        *(_register(client) for _ in range(4)),
        *(_login(client, a["email"]) for a in accounts),
        *(_refresh(client, a) for a in accounts),
    )


async def test_sign_in_and_refresh_work_while_redis_is_frozen_or_killed(
    client: httpx.AsyncClient, private_redis: PrivateRedis
) -> None:
    accounts = [await _register(client) for _ in range(3)]
    await _mistype(client, accounts[0]["email"])
    # Redis is in use: the backoff's counters are there (and no refresh token is).
    assert any(b"gateway:signin:" in key for key in private_redis.stored_keys())
    assert not any(b"refresh" in key for key in private_redis.stored_keys())

    # Frozen during a burst: the calls in flight and the ones after all succeed.
    burst = asyncio.create_task(_sign_in_burst(client, accounts))
    await asyncio.sleep(0)
    private_redis.signal(signal.SIGSTOP)
    await burst
    await _sign_in_burst(client, accounts)

    # Killed while frozen (connections cut at once): the same.
    burst = asyncio.create_task(_sign_in_burst(client, accounts))
    await asyncio.sleep(0)
    private_redis.signal(signal.SIGCONT)
    private_redis.kill()
    await burst
    await _sign_in_burst(client, accounts)
    # Logging out needs no Redis either.
    out = await client.post("/v1/auth/logout", json={"refresh_token": accounts[0]["refresh"]})
    assert out.status_code == 204
    assert (await client.get("/v1/me", headers=bearer(accounts[0]["access"]))).status_code == 401


async def test_a_redis_restart_signs_nobody_out(client: httpx.AsyncClient, private_redis: PrivateRedis) -> None:
    accounts = [await _register(client) for _ in range(2)]
    accounts.append(await _login(client, accounts[0]["email"]))
    await _refresh(client, accounts[1])

    private_redis.kill()
    private_redis.start()  # empty: nothing was persisted
    assert private_redis.stored_keys() == []

    for account in accounts:
        await _refresh(client, account)  # every sign-in goes on
    # And Redis is used again once it is back (the backoff's counters), after the few seconds the
    # gateway leaves a failed Redis alone.
    deadline = time.monotonic() + 30
    while not any(b"gateway:signin:" in key for key in private_redis.stored_keys()):
        assert time.monotonic() < deadline, "the gateway never used the restarted Redis"
        await _mistype(client, accounts[1]["email"])
        await asyncio.sleep(0.5)
