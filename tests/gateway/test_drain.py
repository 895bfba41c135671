"""SIGTERM drains the gateway: an open answer stream ends with a closing event, new requests get
503 with Retry-After, /readyz fails, /healthz still answers; then the process exits cleanly.

Real parts: the gateway as a process (``python -m gateway``) sent a real SIGTERM, real HTTP, a
storage backend whose file watch streams for ever."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path

import httpx

from tests.conftest import spawn_gateway
from tests.gateway.backend import FOREVER, start_storage
from tests.gateway.conftest import DEAD_ADDR, bearer

DRAIN_S = 5


async def test_sigterm_closes_streams_refuses_new_requests_then_exits(tmp_path: Path) -> None:
    storage, _, storage_addr = await start_storage()
    extra = {"DRAIN_S": str(DRAIN_S), "SSE_HEARTBEAT_S": "0.5", "RATE_LIMIT_IP_PER_MINUTE": "0"}
    gateway = await asyncio.to_thread(spawn_gateway, DEAD_ADDR, storage_addr, tmp_path, extra)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=20) as client:
            email = f"u{uuid.uuid4().hex[:10]}@example.edu.vn"
            registered = await client.post(
                "/v1/auth/register", json={"email": email, "password": "correct horse", "display_name": "Sinh viên"}
            )
            assert registered.status_code == 201, registered.text
            headers = bearer(registered.json()["access_token"])
            assert (await client.get("/readyz")).status_code == 200

            lines: list[str] = []
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=20) as streaming,
                streaming.stream("GET", f"/v1/files/{FOREVER}:watch", headers=headers) as stream,
            ):
                assert stream.status_code == 200
                received = stream.aiter_lines()
                while not lines or not lines[-1].startswith("data: "):  # until the watch flows
                    lines.append(await anext(received))
                gateway.process.send_signal(signal.SIGTERM)
                # The signal reaches the process's loop a moment later (more on a loaded machine):
                # the drain has begun once readiness fails.
                ready = await client.get("/readyz")
                for _ in range(100):
                    if ready.status_code == 503:
                        break
                    await asyncio.sleep(0.02)
                    ready = await client.get("/readyz")

                # While draining: new requests are told to come back, readiness fails, liveness holds.
                refused = await client.get("/v1/sessions", headers=headers)
                alive = await client.get("/healthz")

                lines += [line async for line in received]  # ends by itself after the closing event

            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            assert refused.headers["connection"] == "close"
            assert refused.json()["reason"] == "SERVER_DRAINING" and refused.json()["code"] == "UNAVAILABLE"
            assert ready.status_code == 503 and ready.json() == {"status": "draining", "ready": False}
            assert alive.status_code == 200

            closing = lines.index("event: close")
            body = json.loads(lines[closing + 1].removeprefix("data: "))
            assert body["reason"] == "SERVER_DRAINING" and int(body["args"]["retry_after_s"]) >= 1
            assert not any(line.startswith("data: ") for line in lines[closing + 2 :])

        assert await asyncio.to_thread(gateway.process.wait, 60) == 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=5) as client:
            try:
                await client.get("/healthz")
                raise AssertionError("the gateway still answers after it exited")
            except httpx.ConnectError:
                pass
    finally:
        await asyncio.to_thread(gateway.stop)
        await storage.stop(0)
