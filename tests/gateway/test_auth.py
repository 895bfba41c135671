"""Accounts, tokens and the attacks on them; every generated route refuses anonymous callers."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator

import grpc
import jwt
import pytest
from argon2 import PasswordHasher
from gateway.auth import AdminPolicy
from gateway.config import Settings
from studyassist.core.config import ConfigError
from studyassist.core.server import Server
from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from tests.gateway.backend import start_chat, start_metrics
from tests.gateway.conftest import SECRET, MakeStack, Stack, bearer


@pytest.fixture
async def chat_and_metrics() -> AsyncIterator[dict[str, str]]:
    """Chat and metrics backends with every RPC unimplemented: their routes exist, and the gateway
    must refuse anonymous callers before any call reaches them."""
    servers: list[Server] = []
    chat, chat_addr = await start_chat()
    servers.append(chat)
    metrics, metrics_addr = await start_metrics(_Metrics())  # type: ignore[abstract]
    servers.append(metrics)
    yield {"CHAT_ADDR": chat_addr, "METRICS_ADDR": metrics_addr}
    for server in servers:
        await server.stop(0)


class _Metrics(metrics_pb2_grpc.MetricsServiceServicer):
    async def ListAlerts(
        self, request: metrics_pb2.ListAlertsRequest, context: grpc.aio.ServicerContext
    ) -> metrics_pb2.ListAlertsResponse:
        return metrics_pb2.ListAlertsResponse(alerts=[metrics_pb2.Alert(name="p95", threshold=0.5)])

    async def GetDashboard(
        self, request: metrics_pb2.GetDashboardRequest, context: grpc.aio.ServicerContext
    ) -> metrics_pb2.Dashboard:
        return metrics_pb2.Dashboard(window_seconds=request.window_seconds or 300)


def _claims(user_id: str, **override: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "studyassist",
        "aud": "studyassist-web",
        "sub": user_id,
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
        "typ": "access",
    }
    claims.update(override)
    return claims


async def test_hashes_use_the_configured_cost_and_older_hashes_still_sign_in(stack: Stack) -> None:
    user = await stack.register()
    # The default cost is OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
    assert "$m=19456,t=2,p=1$" in stack.storage.hashes[user["user_id"]]
    # A hash stored with other parameters (the library's heavier defaults) carries them, so it verifies.
    stack.storage.hashes[user["user_id"]] = PasswordHasher().hash("correct horse")
    login = await stack.client.post("/v1/auth/login", json={"email": user["email"], "password": "correct horse"})
    assert login.status_code == 200, login.text
    wrong = await stack.client.post("/v1/auth/login", json={"email": user["email"], "password": "wrong horse!"})
    assert wrong.status_code == 401


async def test_register_login_refresh_logout(stack: Stack) -> None:
    user = await stack.register("An.Nguyen@Example.edu.vn")
    assert user["email"] == "An.Nguyen@Example.edu.vn"
    stored_hash = stack.storage.hashes[user["user_id"]]
    assert stored_hash.startswith("$argon2id$")

    duplicate = await stack.client.post(
        "/v1/auth/register",
        json={"email": "an.nguyen@example.edu.vn", "password": "another pass", "display_name": "B"},
    )
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "ALREADY_EXISTS"

    wrong = await stack.client.post(
        "/v1/auth/login", json={"email": "an.nguyen@example.edu.vn", "password": "nope!!!!"}
    )
    unknown = await stack.client.post("/v1/auth/login", json={"email": "who@example.edu.vn", "password": "nope!!!!"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["message"] == unknown.json()["message"]  # no account enumeration

    login = await stack.client.post(
        "/v1/auth/login", json={"email": "AN.NGUYEN@example.edu.vn", "password": "correct horse"}
    )
    assert login.status_code == 200
    tokens = login.json()
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    assert tokens["user"] == {
        "user_id": user["user_id"],
        "email": "an.nguyen@example.edu.vn",
        "display_name": "Sinh viên",
        "is_admin": True,  # development with ADMIN_EMAILS unset: every signed-in user
    }
    me = await stack.client.get("/v1/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200 and me.json()["user_id"] == user["user_id"]

    refreshed = await stack.client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200
    reused = await stack.client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 401  # single use: a stolen refresh token works at most once

    new_refresh = refreshed.json()["refresh_token"]
    assert (await stack.client.post("/v1/auth/logout", json={"refresh_token": new_refresh})).status_code == 204
    after_logout = await stack.client.post("/v1/auth/refresh", json={"refresh_token": new_refresh})
    assert after_logout.status_code == 401

    # A refresh token is not an access token.
    assert (await stack.client.get("/v1/me", headers=bearer(user["refresh"]))).status_code == 401


async def test_register_validates_input(stack: Stack) -> None:
    for body in [
        {"email": "not-an-email", "password": "long enough", "display_name": "A"},
        {"email": "a@b.vn", "password": "short", "display_name": "A"},
        {"email": "a@b.vn", "password": "long enough", "display_name": ""},
        {"email": 5, "password": "long enough", "display_name": "A"},
    ]:
        reply = await stack.client.post("/v1/auth/register", json=body)
        assert reply.status_code == 400, body
        assert reply.json()["code"] == "INVALID_ARGUMENT"


async def test_refresh_tokens_are_kept_by_storage_as_hashes_not_in_redis(make_stack: MakeStack, redis_url: str) -> None:
    stack = await make_stack(REDIS_URL=redis_url)
    user = await stack.register()
    claims = jwt.decode(user["refresh"], options={"verify_signature": False})
    import redis

    client = redis.Redis.from_url(redis_url)
    assert client.exists(f"gateway:refresh:{claims['jti']}") == 0
    # Storage holds the SHA-256 of the token's id, of the sign-in the token names; never the token.
    assert stack.storage.refresh_tokens == {hashlib.sha256(claims["jti"].encode()).digest(): (claims["sid"], False)}
    assert (await stack.client.post("/v1/auth/refresh", json={"refresh_token": user["refresh"]})).status_code == 200
    assert [used for _, used in stack.storage.refresh_tokens.values()] == [True, False]


async def test_token_attacks_are_401(stack: Stack) -> None:
    user = await stack.register()
    uid = user["user_id"]
    forged = {
        "alg none": jwt.encode(_claims(uid), key=None, algorithm="none"),
        "wrong alg": jwt.encode(_claims(uid), SECRET, algorithm="HS512"),
        "bad signature": jwt.encode(_claims(uid), "another-secret-" + "y" * 40, algorithm="HS256"),
        "expired": jwt.encode(_claims(uid, iat=int(time.time()) - 3600, exp=int(time.time()) - 60), SECRET),
        "wrong audience": jwt.encode(_claims(uid, aud="someone-else"), SECRET),
        "wrong issuer": jwt.encode(_claims(uid, iss="evil"), SECRET),
        "no exp": jwt.encode({k: v for k, v in _claims(uid).items() if k != "exp"}, SECRET),
        "refresh as access": jwt.encode(_claims(uid, typ="refresh"), SECRET),
        "unknown user": jwt.encode(_claims("00000000-0000-0000-0000-000000000000"), SECRET),
        "garbage": "not.a.jwt",
    }
    # The same claims, properly signed, do work: the 401s below are about the attack, not the claims.
    assert (await stack.client.get("/v1/me", headers=bearer(jwt.encode(_claims(uid), SECRET)))).status_code == 200
    for name, token in forged.items():
        reply = await stack.client.get("/v1/me", headers=bearer(token))
        assert reply.status_code == 401, name
        assert reply.json()["code"] == "UNAUTHENTICATED", name
        assert reply.headers["www-authenticate"] == "Bearer"


async def test_every_generated_route_refuses_anonymous_callers(
    make_stack: MakeStack, chat_and_metrics: dict[str, str]
) -> None:
    stack = await make_stack(**chat_and_metrics)
    document = (await stack.client.get("/openapi.json")).json()
    checked: dict[str, int] = {}
    for path, operations in document["paths"].items():
        if path.startswith(("/v1/auth/", "/healthz", "/readyz")):
            continue
        url = re.sub(r"\{[^}]+\}", "x1", path)
        for method, operation in operations.items():
            for headers in ({}, bearer("garbage"), {"Authorization": "Basic dXNlcjpwYXNz"}):
                reply = await stack.client.request(method.upper(), url, headers=headers, json={})
                assert reply.status_code == 401, (method, url, headers, reply.text)
                assert reply.json()["code"] == "UNAUTHENTICATED"
            tag = operation["tags"][0]
            checked[tag] = checked.get(tag, 0) + 1
    # Every backend's annotated RPCs (and the gateway's own /v1/config) were tried.
    assert checked["storage"] >= 14 and checked["chat"] >= 7 and checked["metrics"] >= 3, checked
    assert checked["gateway"] == 1


async def test_admin_only_backend_answers_403_to_other_users(
    make_stack: MakeStack, chat_and_metrics: dict[str, str]
) -> None:
    # Listed with stray spaces and capitals: matched trimmed and case-insensitively.
    stack = await make_stack(ADMIN_EMAILS=" Boss@Example.edu.vn ,other@example.edu.vn", **chat_and_metrics)
    student = await stack.register()
    login = await stack.client.post("/v1/auth/login", json={"email": student["email"], "password": "correct horse"})
    assert login.json()["user"]["is_admin"] is False
    for path in ("/v1/metrics/alerts", "/v1/metrics/dashboard", "/v1/metrics/traces/ab"):
        refused = await stack.client.get(path, headers=bearer(student["access"]))
        assert refused.status_code == 403, (path, refused.text)
        body = refused.json()
        assert set(body) == {"code", "message", "request_id", "reason", "args"}
        assert body["code"] == "PERMISSION_DENIED" and body["request_id"] == refused.headers["x-request-id"]
        assert body["reason"] == "ADMIN_ONLY" and body["args"] == {}
    # The student's other routes are unaffected.
    assert (await stack.client.get("/v1/sessions", headers=bearer(student["access"]))).status_code == 200
    config = await stack.client.get("/v1/config", headers=bearer(student["access"]))
    assert config.status_code == 200 and config.json()["is_admin"] is False

    # Registering a listed address claims nothing: the role is stored with the account, granted by
    # an operator (storage.admin; tests/security covers it against the real storage).
    boss = await stack.register("boss@example.edu.vn")
    assert (await stack.client.get("/v1/metrics/alerts", headers=bearer(boss["access"]))).status_code == 403
    stack.storage.roles[boss["user_id"]] = "admin"
    login = await stack.client.post(
        "/v1/auth/login", json={"email": "BOSS@example.edu.vn", "password": "correct horse"}
    )
    assert login.json()["user"]["is_admin"] is True
    boss["access"] = login.json()["access_token"]
    alerts = await stack.client.get("/v1/metrics/alerts", headers=bearer(boss["access"]))
    assert alerts.status_code == 200, alerts.text
    assert alerts.json()["alerts"][0]["name"] == "p95"
    dashboard = await stack.client.get("/v1/metrics/dashboard", headers=bearer(boss["access"]))
    assert dashboard.status_code == 200 and dashboard.json()["window_seconds"] == 300
    assert (await stack.client.get("/v1/config", headers=bearer(boss["access"]))).json()["is_admin"] is True
    # The document says which routes are for administrators.
    document = (await stack.client.get("/openapi.json")).json()
    assert "403" in document["paths"]["/v1/metrics/dashboard"]["get"]["responses"]
    assert "403" not in document["paths"]["/v1/sessions"]["get"]["responses"]


async def test_without_admin_emails_development_admits_everyone_and_production_nobody(
    make_stack: MakeStack, chat_and_metrics: dict[str, str]
) -> None:
    stack = await make_stack(**chat_and_metrics)  # ENVIRONMENT=development, ADMIN_EMAILS unset
    user = await stack.register()
    assert (await stack.client.get("/v1/metrics/alerts", headers=bearer(user["access"]))).status_code == 200
    assert AdminPolicy.from_settings(frozenset(), production=False).allows("student")
    assert not AdminPolicy.from_settings(frozenset(), production=True).allows("student")
    named = AdminPolicy.from_settings(frozenset({"a@b.vn"}), production=False)
    assert named.allows("admin") and not named.allows("student")
    assert Settings.from_env({"ADMIN_EMAILS": "A@B.vn, c@d.vn,"}).admin_emails == {"a@b.vn", "c@d.vn"}
    with pytest.raises(ConfigError, match="ADMIN_EMAILS"):
        Settings.from_env({"ADMIN_EMAILS": "a@b.vn,not-an-email"})


async def test_deactivated_user_is_refused(make_stack: MakeStack) -> None:
    stack = await make_stack(USER_CACHE_TTL_S="0")
    user = await stack.register()
    assert (await stack.client.get("/v1/sessions", headers=bearer(user["access"]))).status_code == 200
    stack.storage.deactivate(user["user_id"])
    assert (await stack.client.get("/v1/sessions", headers=bearer(user["access"]))).status_code == 401
    refreshed = await stack.client.post("/v1/auth/refresh", json={"refresh_token": user["refresh"]})
    assert refreshed.status_code == 401
    login = await stack.client.post("/v1/auth/login", json={"email": user["email"], "password": "correct horse"})
    assert login.status_code == 401


async def test_a_refused_sign_in_is_refused_before_storage_is_asked(make_stack: MakeStack) -> None:
    stack = await make_stack(PASSWORD_HASH_CONCURRENCY="1", PASSWORD_HASH_QUEUE="1")
    account = await stack.register("queue@ptit.edu.vn")
    stack.storage.email_lookups = 0
    body = {"email": account["email"], "password": "correct horse"}
    replies = await asyncio.gather(*(stack.client.post("/v1/auth/login", json=body) for _ in range(12)))
    statuses = [r.status_code for r in replies]
    assert set(statuses) == {200, 429}, statuses
    refused = [r for r in replies if r.status_code == 429]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    # Only the admitted sign-ins looked the account up.
    assert stack.storage.email_lookups == statuses.count(200)
