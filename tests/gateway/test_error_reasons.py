"""Errors carry a stable reason and its arguments beside the status name, English message and
request id: raised by a backend (through the status's trailing metadata) or by the gateway; and a
stream whose backend stops answering its health check ends with a retryable error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.errors import AlreadyExists, reason_from_metadata
from studyassist.core.testing import ServiceProcess

from tests.gateway.backend import start_chat, start_storage
from tests.gateway.conftest import bearer, serve_gateway


@pytest.fixture
async def client(real_storage: ServiceProcess, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve_gateway({"STORAGE_ADDR": real_storage.address}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=20) as http,
    ):
        yield http


def test_reason_round_trips_through_trailing_metadata() -> None:
    error = AlreadyExists("a user with this email already exists", reason="EMAIL_TAKEN", args={"n": 2})
    assert reason_from_metadata(error.trailing_metadata()) == ("EMAIL_TAKEN", {"n": "2"})
    assert AlreadyExists("x").trailing_metadata() == ()
    # Foreign or broken metadata names no reason rather than failing.
    assert reason_from_metadata([("studyassist-error-args", "{not json"), ("other-bin", b"\x00")]) == ("", {})


async def test_backend_and_gateway_errors_name_their_reason(client: httpx.AsyncClient) -> None:
    account = {"email": "trung@example.edu.vn", "password": "mật khẩu dài", "display_name": "A"}
    assert (await client.post("/v1/auth/register", json=account)).status_code == 201
    again = await client.post("/v1/auth/register", json=account)
    assert again.status_code == 409
    body = again.json()
    # The fields API clients had stay as they were; reason and args come beside them.
    assert body["code"] == "ALREADY_EXISTS" and body["message"] == "a user with this email already exists"
    assert body["request_id"] == again.headers["x-request-id"]
    assert body["reason"] == "EMAIL_TAKEN" and body["args"] == {}

    short = await client.post("/v1/auth/register", json={**account, "email": "b@example.edu.vn", "password": "ngắn"})
    assert short.status_code == 400
    assert short.json()["reason"] == "PASSWORD_LENGTH" and short.json()["args"] == {"min": "8", "max": "256"}

    # A wrong password is told apart from an expired session.
    wrong = await client.post("/v1/auth/login", json={"email": account["email"], "password": "sai mật khẩu"})
    assert wrong.status_code == 401 and wrong.json()["reason"] == "INVALID_CREDENTIALS"
    expired = await client.get("/v1/sessions", headers=bearer("not-a-token"))
    assert expired.status_code == 401 and expired.json()["reason"] == "TOKEN_INVALID"


class QuietChat(chat_pb2_grpc.ChatServiceServicer):
    """A chat whose answer never comes (an LLM thinking for ever): only health says it is alive."""

    async def StreamChat(  # type: ignore[override]
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        await asyncio.Event().wait()
        yield chat_pb2.ChatEvent()


async def test_stream_ends_with_a_retryable_error_when_its_backend_stops_answering(tmp_path: Path) -> None:
    storage, _, storage_addr = await start_storage()
    chat, chat_addr = await start_chat(QuietChat())  # type: ignore[abstract]
    env = {
        "STORAGE_ADDR": storage_addr,
        "CHAT_ADDR": chat_addr,
        "SSE_HEARTBEAT_S": "0.5",
        "STREAM_STALL_TIMEOUT_S": "1.5",
    }
    try:
        async with serve_gateway(env, tmp_path) as url, httpx.AsyncClient(base_url=url, timeout=20) as http:
            reply = await http.post(
                "/v1/auth/register",
                json={"email": "lang@example.edu.vn", "password": "correct horse", "display_name": "B"},
            )
            token = reply.json()["access_token"]
            lines: list[str] = []
            request = {"message": "Xin chào, TCP là gì?"}
            async with http.stream("POST", "/v1/chat:stream", json=request, headers=bearer(token)) as stream:
                async for line in stream.aiter_lines():
                    lines.append(line)
                    if line == ": heartbeat" and lines.count(line) == 2:
                        # A slow answer of a live backend: heartbeats flow. Now it stops answering.
                        await chat.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
                    if lines[-2:-1] == ["event: error"]:
                        break
            error_at = lines.index("event: error")
            assert lines[:error_at].count(": heartbeat") >= 2
            body = json.loads(lines[error_at + 1].removeprefix("data: "))
            assert body["code"] == "UNAVAILABLE" and body["reason"] == "BACKEND_NOT_ANSWERING"
            assert body["args"] == {"service": "chat"} and body["request_id"]
    finally:
        await chat.stop(0)
        await storage.stop(0)
