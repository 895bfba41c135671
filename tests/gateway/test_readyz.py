"""The gateway in front of the real chat service: /readyz says which backend chat answers with
(from GetChatStatus) and still answers at once while chat is down; a chat task's watch streams
as SSE from the annotation alone."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from tests.conftest import NO_LLM, spawn_chat
from tests.gateway.backend import start_storage
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
            assert down.status_code == 503
            assert down.json()["chat"] == {"backend": "unknown", "llm_available": False, "error": "UNAVAILABLE"}

            # Chat with no LLM reachable (its storage and embedding are not needed to say so).
            chat = await asyncio.to_thread(
                spawn_chat, DEAD_ADDR, DEAD_ADDR, {"CHAT_PORT": str(chat_port), "LLM_BASE_URL": NO_LLM}
            )
            for _ in range(50):  # the gateway's channel reconnects with back-off; poll like a probe
                ready = await client.get("/readyz")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert ready.status_code == 200, ready.text
            body = ready.json()
            assert body["ready"] is True and body["backends"]["chat"] == "SERVING"
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
