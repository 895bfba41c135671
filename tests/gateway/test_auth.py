"""Accounts, tokens and the attacks on them; every generated route refuses anonymous callers."""

from __future__ import annotations

import re
import time

import jwt
from argon2 import PasswordHasher

from tests.gateway.conftest import SECRET, MakeStack, Stack, bearer


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


async def test_refresh_tokens_in_redis(make_stack: MakeStack, redis_url: str) -> None:
    stack = await make_stack(REDIS_URL=redis_url)
    user = await stack.register()
    claims = jwt.decode(user["refresh"], options={"verify_signature": False})
    import redis

    client = redis.Redis.from_url(redis_url)
    assert client.exists(f"gateway:refresh:{claims['jti']}") == 1
    assert (await stack.client.post("/v1/auth/refresh", json={"refresh_token": user["refresh"]})).status_code == 200
    assert client.exists(f"gateway:refresh:{claims['jti']}") == 0


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


async def test_every_generated_route_refuses_anonymous_callers(stack: Stack) -> None:
    document = (await stack.client.get("/openapi.json")).json()
    checked = 0
    for path, operations in document["paths"].items():
        if path.startswith(("/v1/auth/", "/healthz", "/readyz")):
            continue
        url = re.sub(r"\{[^}]+\}", "x1", path)
        for method in operations:
            for headers in ({}, bearer("garbage"), {"Authorization": "Basic dXNlcjpwYXNz"}):
                reply = await stack.client.request(method.upper(), url, headers=headers, json={})
                assert reply.status_code == 401, (method, url, headers, reply.text)
            checked += 1
    assert checked >= 14  # the storage service's annotated RPCs


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
