"""Routes, JSON mapping and streaming shapes generated from the storage descriptors."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import grpc
import httpx
from gateway.config import Settings
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc

from tests.gateway.backend import FOREVER, start_chat
from tests.gateway.conftest import MakeStack, Stack, bearer


async def test_path_variable_and_body_map_to_fields(stack: Stack) -> None:
    user = await stack.register()
    created = await stack.client.post(
        "/v1/sessions", json={"title": "Giải tích 1", "agent_id": "tutor"}, headers=bearer(user["access"])
    )
    assert created.status_code == 200, created.text
    session = created.json()
    assert session["title"] == "Giải tích 1"
    assert session["message_count"] == 0  # defaults are printed: a stable shape for the web app
    assert session["created_at"].endswith("Z")
    sid = session["session_id"]

    updated = await stack.client.patch(f"/v1/sessions/{sid}", json={"title": "Đại số"}, headers=bearer(user["access"]))
    assert updated.status_code == 200, updated.text
    request, user_id = stack.storage.requests["UpdateSession"]
    assert request.session_id == sid and request.title == "Đại số"  # type: ignore[attr-defined]
    assert user_id == user["user_id"]


async def test_path_variable_and_query_map_to_fields(stack: Stack) -> None:
    user = await stack.register()
    sid = (await stack.client.post("/v1/sessions", json={}, headers=bearer(user["access"]))).json()["session_id"]
    reply = await stack.client.get(
        f"/v1/sessions/{sid}/messages", params={"page_size": "7", "page_token": "abc"}, headers=bearer(user["access"])
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"messages": [], "next_page_token": "size=7"}
    request, _ = stack.storage.requests["ListMessages"]
    assert (request.session_id, request.page_size, request.page_token) == (sid, 7, "abc")  # type: ignore[attr-defined]


async def test_bad_input_is_400_with_error_body(stack: Stack) -> None:
    user = await stack.register()
    auth = bearer(user["access"])
    cases = [
        await stack.client.post("/v1/sessions", content=b"{not json", headers=auth),
        await stack.client.post("/v1/sessions", json={"no_such_field": 1}, headers=auth),
        await stack.client.post("/v1/sessions", json=["a"], headers=auth),
        await stack.client.get("/v1/sessions", params={"page_size": "many"}, headers=auth),
        await stack.client.get("/v1/sessions", params={"bogus": "1"}, headers=auth),
    ]
    for reply in cases:
        assert reply.status_code == 400, reply.text
        body = reply.json()
        assert body["code"] == "INVALID_ARGUMENT"
        assert body["request_id"] == reply.headers["x-request-id"]


async def test_grpc_status_maps_to_http_without_internals(stack: Stack) -> None:
    user = await stack.register()
    auth = bearer(user["access"])
    missing = await stack.client.get("/v1/files/nope", headers={**auth, "X-Request-ID": "req-123"})
    assert missing.status_code == 404
    assert missing.json() == {
        "code": "NOT_FOUND",
        "message": "file nope not found",
        "request_id": "req-123",
        "reason": "",
        "args": {},
    }
    assert missing.headers["x-request-id"] == "req-123"

    broken = await stack.client.get("/v1/files/boom", headers=auth)
    assert broken.status_code == 500
    assert broken.json()["message"] == "internal error"
    assert "passwd" not in broken.text and "Traceback" not in broken.text

    other = await stack.register()
    sid = (await stack.client.post("/v1/sessions", json={}, headers=auth)).json()["session_id"]
    stolen = await stack.client.get(f"/v1/sessions/{sid}/messages", headers=bearer(other["access"]))
    assert stolen.status_code == 404

    # Chat and metrics are not reachable in this stack: an unknown route may be theirs, so "try again".
    no_route = await stack.client.get("/v1/nothing/here", headers=auth)
    assert no_route.status_code == 503 and no_route.json()["code"] == "UNAVAILABLE"
    wrong_method = await stack.client.put("/v1/sessions", headers=auth)
    assert wrong_method.status_code == 405


async def test_client_sent_user_id_is_ignored(stack: Stack) -> None:
    victim = await stack.register()
    attacker = await stack.register()
    auth = {**bearer(attacker["access"]), "X-User-Id": victim["user_id"]}
    created = await stack.client.post(
        "/v1/sessions", params={"user_id": victim["user_id"]}, json={"user_id": victim["user_id"]}, headers=auth
    )
    assert created.status_code == 200, created.text
    assert stack.storage.requests["CreateSession"][1] == attacker["user_id"]
    listed = await stack.client.get("/v1/sessions", params={"user_id": victim["user_id"]}, headers=auth)
    assert stack.storage.requests["ListSessions"][1] == attacker["user_id"]
    assert len(listed.json()["sessions"]) == 1


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


async def test_server_streaming_is_sse(stack: Stack) -> None:
    user = await stack.register()
    async with stack.client.stream("GET", "/v1/files/f1:watch", headers=bearer(user["access"])) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in reply.headers
        text = (await reply.aread()).decode()
    events = _events(text)
    assert [e["chunks_done"] for e in events[:3]] == [1, 2, 3]
    assert events[-1]["status"] == "FILE_STATUS_READY" and events[-1]["file_id"] == "f1"

    # EventSource cannot send headers: the token may come as a query parameter on streams only.
    query_token = await stack.client.get("/v1/files/f1:watch", params={"access_token": user["access"]})
    assert query_token.status_code == 200 and len(_events(query_token.text)) == 4
    not_on_unary = await stack.client.get("/v1/sessions", params={"access_token": user["access"]})
    assert not_on_unary.status_code == 401

    missing = await stack.client.get("/v1/files/missing:watch", headers=bearer(user["access"]))
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"


async def test_disconnecting_sse_client_cancels_backend_call(stack: Stack) -> None:
    user = await stack.register()
    async with stack.client.stream("GET", f"/v1/files/{FOREVER}:watch", headers=bearer(user["access"])) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                break
    assert not stack.storage.watch_cancelled.is_set()
    await asyncio.wait_for(stack.storage.watch_cancelled.wait(), 5)


async def test_sse_heartbeats_and_deactivated_user_stream_ends(make_stack: object) -> None:
    stack: Stack = await make_stack(SSE_HEARTBEAT_S="0.5", USER_CACHE_TTL_S="0")  # type: ignore[operator]
    user = await stack.register()
    lines: list[str] = []
    async with stack.client.stream("GET", f"/v1/files/{FOREVER}:watch", headers=bearer(user["access"])) as reply:
        async for line in reply.aiter_lines():
            lines.append(line)
            if len(lines) == 4:
                stack.storage.deactivate(user["user_id"])
            if lines[-2:-1] == ["event: error"]:
                break
    assert ": heartbeat" not in lines  # messages every 50 ms: no heartbeat needed
    error_line = next(i for i, line in enumerate(lines) if line.startswith("event: error"))
    assert json.loads(lines[error_line + 1][6:])["code"] == "UNAUTHENTICATED"
    after = await stack.client.get("/v1/sessions", headers=bearer(user["access"]))
    assert after.status_code == 401


async def test_sse_heartbeat_comments_keep_quiet_streams_open(make_stack: MakeStack) -> None:
    stack = await make_stack(SSE_HEARTBEAT_S="0.5")
    user = await stack.register()
    lines: list[str] = []
    async with stack.client.stream("GET", "/v1/files/slow:watch", headers=bearer(user["access"])) as reply:
        async for line in reply.aiter_lines():
            lines.append(line)
            if sum(line.startswith("data: ") for line in lines) == 2:
                break
    assert ": heartbeat" in lines


async def test_upload_streams_raw_body_in_chunks(stack: Stack) -> None:
    user = await stack.register()
    payload = bytes(range(256)) * (14 * 1024)  # 3.5 MiB

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 100_000):
            yield payload[start : start + 100_000]

    reply = await stack.client.post(
        "/v1/files",
        params={"file_name": "bài giảng.pdf"},
        content=body(),  # chunked transfer: the gateway never sees a length up front
        headers={**bearer(user["access"]), "Content-Type": "application/pdf"},
    )
    assert reply.status_code == 200, reply.text
    file = reply.json()
    assert file["file_name"] == "bài giảng.pdf"
    assert file["size_bytes"] == str(len(payload))  # proto3 JSON: int64 as string
    upload = stack.storage.uploads[-1]
    assert upload.digest == hashlib.sha256(payload).hexdigest()
    assert upload.metadata.content_type == "application/pdf"
    assert max(upload.chunk_sizes) <= 1024 * 1024 and len(upload.chunk_sizes) >= 4
    assert upload.user_id == user["user_id"]


async def test_upload_multipart_takes_filename(stack: Stack) -> None:
    user = await stack.register()
    payload = b"%PDF-1.4 " + b"x" * 2_500_000
    reply = await stack.client.post(
        "/v1/files",
        files={"file": ("slides.pptx", payload, "application/vnd.ms-powerpoint")},
        headers=bearer(user["access"]),
    )
    assert reply.status_code == 200, reply.text
    upload = stack.storage.uploads[-1]
    assert upload.metadata.file_name == "slides.pptx"
    assert upload.digest == hashlib.sha256(payload).hexdigest()
    assert max(upload.chunk_sizes) <= 1024 * 1024


async def test_upload_over_limit_is_413(make_stack: object) -> None:
    stack: Stack = await make_stack(UPLOAD_MAX_BYTES="2000000")  # type: ignore[operator]
    user = await stack.register()
    declared = await stack.client.post(
        "/v1/files", params={"file_name": "a.txt"}, content=b"x" * 2_000_001, headers=bearer(user["access"])
    )
    assert declared.status_code == 413 and declared.json()["code"] == "RESOURCE_EXHAUSTED"

    async def body() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"y" * 100_000

    try:
        streamed = await stack.client.post(
            "/v1/files", params={"file_name": "b.txt"}, content=body(), headers=bearer(user["access"])
        )
        assert streamed.status_code == 413
    except httpx.HTTPError:
        pass  # the gateway may answer and close before the client finished sending: also a refusal
    assert all(u.metadata.file_name != "b.txt" for u in stack.storage.uploads)


async def test_body_limit_on_json_routes(make_stack: object) -> None:
    stack: Stack = await make_stack(MAX_BODY_BYTES="2048")  # type: ignore[operator]
    user = await stack.register()
    reply = await stack.client.post("/v1/sessions", json={"title": "x" * 5000}, headers=bearer(user["access"]))
    assert reply.status_code == 413


class _TimedChat(chat_pb2_grpc.ChatServiceServicer):
    """Answers at once, noting how long the caller's deadline still had to run."""

    def __init__(self) -> None:
        self.time_remaining: float | None = None

    async def Chat(self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext) -> chat_pb2.ChatResponse:
        self.time_remaining = context.time_remaining()
        return chat_pb2.ChatResponse(session_id="s1", answer=f"echo: {request.message}", backend="extractive")


async def test_chat_calls_get_the_chat_deadline_and_others_the_default(make_stack: MakeStack) -> None:
    # An answer waits on the LLM (LLM_TIMEOUT_S, 120 s): the channel's 10 s default would cut it off.
    assert Settings.from_env({}).chat_timeout_s == 130
    chat = _TimedChat()  # type: ignore[abstract]
    server, chat_addr = await start_chat(chat)
    try:
        stack = await make_stack(CHAT_ADDR=chat_addr, GATEWAY_CHAT_TIMEOUT_S="77")
        user = await stack.register()
        reply = await stack.client.post("/v1/chat", json={"message": "xin chào"}, headers=bearer(user["access"]))
        assert reply.status_code == 200, reply.text
        assert reply.json()["answer"] == "echo: xin chào"
        assert chat.time_remaining is not None and 70 < chat.time_remaining < 77.5, chat.time_remaining
        # Storage keeps the channel's default deadline.
        assert (await stack.client.get("/v1/sessions", headers=bearer(user["access"]))).status_code == 200
        remaining = stack.storage.time_remaining["ListSessions"]
        assert remaining is not None and 5 < remaining < 10.5, remaining  # (clock granularity: a hair over is fine)
    finally:
        await server.stop(0)


async def test_bodiless_requests_are_built_once_per_query(stack: Stack) -> None:
    user = await stack.register()
    auth = bearer(user["access"])
    for size in ("3", "3", "4", "3"):
        reply = await stack.client.get("/v1/sessions", params={"page_size": size}, headers=auth)
        assert reply.status_code == 200, reply.text
        request, user_id = stack.storage.requests["ListSessions"]
        assert request.page_size == int(size) and user_id == user["user_id"]  # type: ignore[attr-defined]
    route = next(r for r in stack.routes() if r.rpc_path.endswith("/ListSessions"))
    assert sorted(key[0] for key in route.requests) == [b"page_size=3", b"page_size=4"]
    # A query that does not map is refused every time, and never kept.
    for _ in range(2):
        bad = await stack.client.get("/v1/sessions", params={"page_size": "many"}, headers=auth)
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_ARGUMENT"
    assert len(route.requests) == 2
