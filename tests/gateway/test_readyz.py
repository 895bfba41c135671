"""The gateway's /readyz: which backends are degraded, and chat's backend (from GetChatStatus).

Chat and metrics are optional (a gateway without them still serves documents, history and the web
app, so it stays in the Service with 200 and "degraded"); storage is required (503). Also: a chat
task's watch streams as SSE from the annotation alone."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from tests.conftest import NO_LLM, spawn_chat
from tests.gateway.backend import start_chat, start_metrics, start_storage
from tests.gateway.conftest import DEAD_ADDR, bearer, free_port, serve_gateway


async def register(client: httpx.AsyncClient, email: str) -> str:
    reply = await client.post(
        "/v1/auth/register", json={"email": email, "password": "correct horse", "display_name": "Sinh viên"}
    )
    assert reply.status_code == 201, reply.text
    token: str = reply.json()["access_token"]
    return token


async def test_readyz_shows_the_chat_backend_and_a_task_watch_streams(tmp_path: Path) -> None:
    storage, _, storage_addr = await start_storage()
    chat_port = free_port()
    chat = None
    try:
        async with (
            serve_gateway({"STORAGE_ADDR": storage_addr, "CHAT_ADDR": f"127.0.0.1:{chat_port}"}, tmp_path) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            asked_at = time.monotonic()
            down = await client.get("/readyz")
            # Bounded by the gateway's short per-backend timeout, not by chat.
            assert time.monotonic() - asked_at < 5
            # Chat is away: degraded, not unready (storage, the one required backend, serves).
            assert down.status_code == 200, down.text
            degraded = down.json()
            assert degraded["status"] == "degraded" and degraded["ready"] is True
            assert degraded["backends"] == {"chat": "NOT_SERVING", "storage": "SERVING", "metrics": "NOT_SERVING"}
            assert degraded["degraded"] == ["chat", "metrics"] and degraded["required"] == ["storage"]
            assert degraded["chat"] == {"backend": "unknown", "llm_available": False, "error": "UNAVAILABLE"}
            assert down.headers["cache-control"] == "no-store"

            # Chat with no LLM reachable (its storage and embedding are not needed to say so).
            chat = await asyncio.to_thread(
                spawn_chat, DEAD_ADDR, DEAD_ADDR, {"CHAT_PORT": str(chat_port), "LLM_BASE_URL": NO_LLM}
            )
            for _ in range(100):  # the gateway's channel reconnects with back-off; poll like a probe
                ready = await client.get("/readyz")
                if ready.json()["backends"]["chat"] == "SERVING":
                    break
                await asyncio.sleep(0.2)
            assert ready.status_code == 200, ready.text
            body = ready.json()
            assert body["ready"] is True and body["backends"]["chat"] == "SERVING"
            assert body["degraded"] == ["metrics"] and body["status"] == "degraded"
            assert body["chat"] == {"backend": "extractive", "llm_available": False}

            # WatchChatTask as SSE: the task's states until the terminal one, then the stream ends.
            # (This chat's storage is down, so the task fails; the watch must still end with it.)
            token, other = await register(client, "a@example.edu.vn"), await register(client, "b@example.edu.vn")
            for _ in range(50):  # chat's routes load once the gateway reaches it
                submitted = await client.post(
                    "/v1/chat/tasks", json={"message": "What is a heap?"}, headers=bearer(token)
                )
                if submitted.status_code not in (404, 503):
                    break
                await asyncio.sleep(0.2)
            assert submitted.status_code == 200, submitted.text
            task_id = submitted.json()["task_id"]
            async with client.stream("GET", f"/v1/chat/tasks/{task_id}:watch", headers=bearer(token)) as reply:
                assert reply.status_code == 200
                assert reply.headers["content-type"].startswith("text/event-stream")
                text = (await reply.aread()).decode()
            events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
            assert events and all(e["task_id"] == task_id for e in events)
            assert events[-1]["state"] == "CHAT_TASK_STATE_FAILED" and events[-1]["error"]
            assert all(e["state"] != "CHAT_TASK_STATE_FAILED" for e in events[:-1])
            theirs = await client.get(f"/v1/chat/tasks/{task_id}:watch", headers=bearer(other))
            assert theirs.status_code == 404 and theirs.json()["code"] == "NOT_FOUND"
    finally:
        if chat is not None:
            chat.stop()
        await storage.stop(0)


async def test_readyz_is_503_without_storage_and_200_once_it_is_back(tmp_path: Path) -> None:
    """Storage is required: the probe takes this gateway out of the Service until it reaches storage
    again (on the same address, as after a restart), and then reports everything serving."""
    storage, _, storage_addr = await start_storage()
    chat, chat_addr = await start_chat()
    metrics, metrics_addr = await start_metrics()
    port = int(storage_addr.rsplit(":", 1)[1])
    env = {"STORAGE_ADDR": storage_addr, "CHAT_ADDR": chat_addr, "METRICS_ADDR": metrics_addr}
    try:
        async with serve_gateway(env, tmp_path) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            ok = await client.get("/readyz")
            assert ok.status_code == 200, ok.text
            assert ok.json()["status"] == "ok" and ok.json()["degraded"] == []

            await storage.stop(0)
            gone = await client.get("/readyz")
            assert gone.status_code == 503, gone.text
            assert gone.json()["status"] == "unavailable" and gone.json()["ready"] is False
            assert gone.json()["degraded"] == ["storage"]
            assert gone.json()["backends"]["chat"] == "SERVING"

            storage, _, _ = await start_storage(port)
            for _ in range(100):  # the channel reconnects with back-off; poll like a probe
                back = await client.get("/readyz")
                if back.status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert back.status_code == 200, back.text
            assert back.json()["status"] == "ok"
    finally:
        await storage.stop(0)
        await chat.stop(0)
        await metrics.stop(0)
