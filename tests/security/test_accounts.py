"""Account protection (issue 18, "Accounts"), through the real gateway and the real storage service
(in this process, on a fresh PostgreSQL database per test):

- a replayed refresh token ends its whole sign-in, the token issued from it included;
- logout ends the sign-in's access tokens too, on every gateway replica;
- registration is all or nothing;
- password guessing is slowed per account and per address, without locking the student out long;
- admin rights are stored with the account and granted by an operator, never claimed by registering;
- production refuses the example JWT secrets committed in deploy/ and guessable ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import httpx
import jwt
import pytest
from gateway.config import Settings, resolve_jwt_secret
from storage.config import Settings as StorageSettings
from storage.server import build
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.config import CommonSettings, ConfigError
from studyassist.core.secrets import entropy_bits
from studyassist.core.telemetry import setup_telemetry
from studyassist.core.testing import serving
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from tests.gateway.conftest import bearer, serve_gateway
from tests.security.test_production_secrets import committed_examples

DEAD_ADDR = "127.0.0.1:9"
PASSWORD = "mật khẩu đúng"


@asynccontextmanager
async def storage_server(
    database_url: str, data_dir: Path, **env: str
) -> AsyncIterator[tuple[str, storage_pb2_grpc.StorageServiceAsyncStub]]:
    """The storage service built in this process (no ingestion, so no embedding service needed)."""
    settings = StorageSettings.from_env(
        {
            "DATABASE_URL": database_url,
            "EMBEDDING_ADDR": DEAD_ADDR,
            "METRICS_ADDR": DEAD_ADDR,
            "BLOB_DIR": str(data_dir / "blobs"),
            "STORAGE_PORT": "0",
            "DB_POOL_MIN": "1",
            "DB_POOL_MAX": "4",
            "INGEST_WORKERS": "0",
            **env,
        }
    )
    common = CommonSettings.from_env({"DATA_DIR": str(data_dir)})
    async with serving(lambda: build(settings, common, setup_telemetry("storage-test", None))) as address:
        channel = create_channel(address)
        try:
            yield address, storage_pb2_grpc.StorageServiceStub(channel)
        finally:
            await channel.close(None)


@dataclass
class Mesh:
    storage: storage_pb2_grpc.StorageServiceAsyncStub
    storage_addr: str
    client: httpx.AsyncClient
    database_url: str


@pytest.fixture
async def mesh(database_url: str, tmp_path: Path) -> AsyncIterator[Mesh]:
    async with (
        storage_server(database_url, tmp_path) as (address, stub),
        serve_gateway({"STORAGE_ADDR": address}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield Mesh(stub, address, client, database_url)


def _email() -> str:
    return f"sv{uuid.uuid4().hex[:10]}@stu.ptit.edu.vn"


def _address() -> str:
    """A client address of its own (the gateway trusts X-Forwarded-For from 127.0.0.1, as uvicorn does)."""
    return "10." + ".".join(str(random.randint(1, 254)) for _ in range(3))


async def _register(client: httpx.AsyncClient, email: str | None = None) -> dict[str, str]:
    email = email or _email()
    reply = await client.post("/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": "SV"})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    return {
        "email": email,
        "user_id": body["user"]["user_id"],
        "access": body["access_token"],
        "refresh": body["refresh_token"],
    }


async def _login(client: httpx.AsyncClient, email: str, password: str = PASSWORD, address: str = "") -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return await client.post("/v1/auth/login", json={"email": email, "password": password}, headers=headers)


async def _refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/v1/auth/refresh", json={"refresh_token": token})


async def _me(client: httpx.AsyncClient, access: str) -> int:
    return (await client.get("/v1/me", headers=bearer(access))).status_code


async def test_a_replayed_refresh_token_ends_its_whole_sign_in(mesh: Mesh) -> None:
    client = mesh.client
    account = await _register(client)
    other = (await _login(client, account["email"])).json()  # a second sign-in (another device)
    first = await _refresh(client, account["refresh"])
    assert first.status_code == 200
    newer = first.json()
    assert await _me(client, newer["access_token"]) == 200

    # The old token again: a replay. Refused, and everything of its sign-in with it.
    replay = await _refresh(client, account["refresh"])
    assert replay.status_code == 401 and replay.json()["reason"] == "REFRESH_TOKEN_USED"
    assert (await _refresh(client, newer["refresh_token"])).status_code == 401
    refused = await client.get("/v1/me", headers=bearer(newer["access_token"]))
    assert refused.status_code == 401 and refused.json()["reason"] == "SIGN_IN_ENDED"
    assert await _me(client, account["access"]) == 401
    # The other sign-in is untouched.
    assert await _me(client, other["access_token"]) == 200
    assert (await _refresh(client, other["refresh_token"])).status_code == 200

    # Storage keeps SHA-256 hashes of the tokens' ids, never a token.
    ids = [
        jwt.decode(t, options={"verify_signature": False})["jti"] for t in (account["refresh"], newer["refresh_token"])
    ]
    conn = await asyncpg.connect(mesh.database_url)
    try:
        stored = {bytes(r["token_hash"]) for r in await conn.fetch("SELECT token_hash FROM refresh_tokens")}
        dump = " ".join(str(tuple(r)) for r in await conn.fetch("SELECT * FROM refresh_tokens JOIN sign_ins ON true"))
    finally:
        await conn.close()
    assert {hashlib.sha256(i.encode()).digest() for i in ids} <= stored
    assert all(i not in dump and account["refresh"] not in dump for i in ids)


async def test_logout_ends_the_sign_ins_access_tokens_on_every_replica(mesh: Mesh, tmp_path: Path) -> None:
    client = mesh.client
    account = await _register(client)
    refreshed = (await _refresh(client, account["refresh"])).json()
    elsewhere = (await _login(client, account["email"])).json()
    async with (
        serve_gateway({"STORAGE_ADDR": mesh.storage_addr, "USER_CACHE_TTL_S": "0"}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as replica,
    ):
        assert await _me(replica, refreshed["access_token"]) == 200
        out = await client.post("/v1/auth/logout", json={"refresh_token": refreshed["refresh_token"]})
        assert out.status_code == 204
        # Every access token of that sign-in, the first and the refreshed one, here and on the other replica.
        for gateway in (client, replica):
            for access in (account["access"], refreshed["access_token"]):
                reply = await gateway.get("/v1/sessions", headers=bearer(access))
                assert reply.status_code == 401 and reply.json()["reason"] == "SIGN_IN_ENDED", reply.text
            assert await _me(gateway, elsewhere["access_token"]) == 200
        assert (await _refresh(replica, refreshed["refresh_token"])).status_code == 401


async def test_registration_stores_the_account_and_its_sign_in_together_or_neither(mesh: Mesh) -> None:
    taken = await _register(mesh.client)
    sign_in_id = jwt.decode(taken["refresh"], options={"verify_signature": False})["sid"]
    email = _email()
    # The account's first sign-in cannot be stored (its id is taken): the account is not kept either.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.storage.CreateUser(
            storage_pb2.CreateUserRequest(
                email=email,
                display_name="SV",
                password_hash="$argon2id$v=19$m=19456,t=2,p=1$x$y",
                first_sign_in=storage_pb2.NewSignIn(sign_in_id=sign_in_id, refresh_token_hash=b"\1" * 32, ttl_s=60),
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await mesh.storage.GetUserByEmail(storage_pb2.GetUserByEmailRequest(email=email))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # So registering again is not answered 409.
    again = await _register(mesh.client, email)
    assert await _me(mesh.client, again["access"]) == 200


@pytest.fixture(params=["local", "redis"])
async def guarded(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway with small backoff bounds, counting locally or in Redis."""
    env = {
        "SIGN_IN_FREE_ATTEMPTS": "3",
        "SIGN_IN_IP_FREE_ATTEMPTS": "4",
        "SIGN_IN_ACCOUNT_MAX_BACKOFF_S": "2",
        "SIGN_IN_MAX_BACKOFF_S": "600",
        "REDIS_URL": request.getfixturevalue("redis_url") if request.param == "redis" else "",
    }
    async with (
        storage_server(database_url, tmp_path) as (address, _),
        serve_gateway({"STORAGE_ADDR": address, **env}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        yield client


def _retry_after(reply: httpx.Response) -> int:
    assert reply.status_code == 429, reply.text
    assert reply.json()["reason"] == "SIGN_IN_BACKOFF" and reply.json()["code"] == "RESOURCE_EXHAUSTED"
    return int(reply.headers["Retry-After"])


async def test_password_guessing_is_slowed_without_locking_the_student_out(guarded: httpx.AsyncClient) -> None:
    client = guarded
    student = await _register(client)
    attacker, home = _address(), _address()

    # A student's typos are free: two wrong passwords, then the right one at once.
    for _ in range(2):
        assert (await _login(client, student["email"], "sai mật khẩu", home)).status_code == 401
    assert (await _login(client, student["email"], address=home)).status_code == 200

    # 40 guesses at once: counted as they arrive, so only the first few are even checked.
    burst = await asyncio.gather(*(_login(client, student["email"], f"đoán {i}", attacker) for i in range(40)))
    statuses = [r.status_code for r in burst]
    assert set(statuses) == {401, 429} and statuses.count(429) >= 30, statuses
    assert all(_retry_after(r) >= 1 for r in burst if r.status_code == 429)

    # Each further guess from that address waits twice as long as the one before.
    waits = []
    for _ in range(3):
        blocked = await _login(client, student["email"], "đoán nữa", attacker)
        if blocked.status_code == 429:
            waits.append(_retry_after(blocked))
            await asyncio.sleep(waits[-1])
            blocked = await _login(client, student["email"], "đoán nữa", attacker)
        assert blocked.status_code == 401, blocked.text
    attacker_wait = _retry_after(await _login(client, student["email"], "đoán nữa", attacker))
    assert attacker_wait > 2 and waits == sorted(waits), (attacker_wait, waits)

    # The student, from their own address, waits at most the account's bound (2 s here), then is in;
    # even the right password is refused while the account waits, so the bound is what guessing gets.
    reply = await _login(client, student["email"], address=home)
    if reply.status_code == 429:
        assert _retry_after(reply) <= 2
        await asyncio.sleep(_retry_after(reply))
        reply = await _login(client, student["email"], address=home)
    assert reply.status_code == 200, reply.text
    # The attacker's address is still waiting.
    assert _retry_after(await _login(client, student["email"], "đoán nữa", attacker)) > 2

    # One address trying many accounts is slowed too (4 free failures here); its successful
    # sign-ins are not counted (a class behind one NAT address signs in at once).
    sprayer = _address()
    classmates = [await _register(client) for _ in range(6)]
    signed_in = await asyncio.gather(*(_login(client, c["email"], address=sprayer) for c in classmates))
    assert [r.status_code for r in signed_in] == [200] * 6
    spray = [(await _login(client, _email(), "123456789", sprayer)).status_code for _ in range(8)]
    assert spray[:4] == [401] * 4 and 429 in spray[4:], spray
    # Other addresses are not.
    assert (await _login(client, student["email"], address=_address())).status_code == 200


def _admin_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storage.admin", *args],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _role(stub: storage_pb2_grpc.StorageServiceAsyncStub, user_id: str) -> str:
    account = await stub.GetAccount(storage_pb2.GetAccountRequest(), metadata=user_metadata(user_id))
    return account.role


async def test_admin_rights_are_granted_by_an_operator_never_claimed_by_registering(
    database_url: str, tmp_path: Path
) -> None:
    listed = "  Early@Example.edu.vn ,LATE@example.edu.vn"
    # The gateway names an administrator, so development's "everyone is one" is off.
    gateway_env = {"ADMIN_EMAILS": "early@example.edu.vn"}
    async with (
        storage_server(database_url, tmp_path) as (address, _),
        serve_gateway({"STORAGE_ADDR": address, **gateway_env}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        early = await _register(client, "early@example.edu.vn")

    # Storage starts with ADMIN_EMAILS: the account that already had a listed address (any case,
    # stray spaces) becomes an administrator.
    async with (
        storage_server(database_url, tmp_path, ADMIN_EMAILS=listed) as (address, stub),
        serve_gateway({"STORAGE_ADDR": address, **gateway_env}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        assert await _role(stub, early["user_id"]) == "admin"
        login = await _login(client, "EARLY@example.edu.vn")
        assert login.json()["user"]["is_admin"] is True
        # A listed address nobody had used: registering it (any spelling) claims nothing.
        late = await _register(client, "Late@Example.edu.vn")
        assert await _role(stub, late["user_id"]) == "student"
        config = await client.get("/v1/config", headers=bearer(late["access"]))
        assert config.json()["is_admin"] is False
        assert (await _login(client, "late@example.edu.vn")).json()["user"]["is_admin"] is False

    # Not on a restart either: each entry is applied once.
    async with storage_server(database_url, tmp_path, ADMIN_EMAILS=listed) as (_, stub):
        assert await _role(stub, late["user_id"]) == "student"

    # The operator's command grants and revokes; a revoke sticks though the address is still listed.
    granted = _admin_cli(database_url, "grant", " LATE@example.edu.vn ")
    assert granted.returncode == 0, granted.stderr
    assert _admin_cli(database_url, "revoke", "early@example.edu.vn").returncode == 0
    unknown = _admin_cli(database_url, "grant", "nobody@example.edu.vn")
    assert unknown.returncode == 1 and "no account" in unknown.stderr
    listing = _admin_cli(database_url, "list")
    assert listing.returncode == 0 and "late@example.edu.vn" in listing.stdout
    assert "early@example.edu.vn" not in listing.stdout
    async with (
        storage_server(database_url, tmp_path, ADMIN_EMAILS=listed) as (address, stub),
        serve_gateway({"STORAGE_ADDR": address, **gateway_env}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        assert await _role(stub, late["user_id"]) == "admin"
        assert await _role(stub, early["user_id"]) == "student"
        login = await _login(client, "late@example.edu.vn")
        assert login.json()["user"]["is_admin"] is True
        config = await client.get("/v1/config", headers=bearer(login.json()["access_token"]))
        assert config.json()["is_admin"] is True


def test_production_refuses_the_example_and_guessable_jwt_secrets(tmp_path: Path) -> None:
    # That each is on the refused list: test_production_secrets.py.
    examples = committed_examples("JWT_SECRET")
    assert len(examples) >= 2, examples
    production = CommonSettings.from_env({"ENVIRONMENT": "production", "DATA_DIR": str(tmp_path)})
    development = CommonSettings.from_env({"DATA_DIR": str(tmp_path)})

    def resolve(secret: str, common: CommonSettings) -> str:
        return resolve_jwt_secret(Settings.from_env({"JWT_SECRET": secret}), common)

    for secret in examples:
        with pytest.raises(ConfigError, match="example value"):
            resolve(secret, production)
        assert resolve(secret, development) == secret  # the dev overlay keeps working
    for guessable in ("a" * 64, "ab" * 32, "password" * 5, "0123456789" * 4):
        assert entropy_bits(guessable) < 128
        with pytest.raises(ConfigError, match="guessable"):
            resolve(guessable, production)
    for good in (secrets.token_hex(32), secrets.token_urlsafe(48)):
        assert resolve(good, production) == good
