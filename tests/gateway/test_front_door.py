"""Limits, headers, health, static files, OpenAPI and picking up backends that start later."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from studyassist.core.server import ServiceSpec, create_server
from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from tests.gateway.backend import start_chat, start_metrics, start_storage
from tests.gateway.conftest import MakeStack, Stack, bearer, free_port, serve_gateway


@pytest.mark.parametrize("use_redis", [False, True])
async def test_rate_limit_per_user_answers_429_with_retry_after(
    make_stack: MakeStack, use_redis: bool, request: pytest.FixtureRequest
) -> None:
    env = {"RATE_LIMIT_PER_MINUTE": "3"}
    if use_redis:
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    stack = await make_stack(**env)
    user = await stack.register()
    codes = [(await stack.client.get("/v1/sessions", headers=bearer(user["access"]))).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = await stack.client.get("/v1/sessions", headers=bearer(user["access"]))
    assert limited.json()["code"] == "RESOURCE_EXHAUSTED"
    # When a place frees up: a third of a minute for the local bucket, when the oldest of the three
    # leaves the minute's window in Redis.
    assert 1 <= int(limited.headers["retry-after"]) <= (60 if use_redis else 20)
    # Another user has their own bucket.
    other = await stack.register()
    assert (await stack.client.get("/v1/sessions", headers=bearer(other["access"]))).status_code == 200


async def test_rate_limit_per_ip(make_stack: MakeStack) -> None:
    stack = await make_stack(RATE_LIMIT_IP_PER_MINUTE="2")
    bad_login = {"email": "x@example.edu.vn", "password": "whatever1"}
    codes = [(await stack.client.post("/v1/auth/login", json=bad_login)).status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    assert (await stack.client.get("/healthz")).status_code == 200  # health is never limited


async def test_health_and_readiness(tmp_path: Path) -> None:
    storage, _, storage_addr = await start_storage()
    chat_port = free_port()
    try:
        async with (
            serve_gateway({"STORAGE_ADDR": storage_addr, "CHAT_ADDR": f"127.0.0.1:{chat_port}"}, tmp_path) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            # Chat is optional: degraded, still ready (test_readyz covers required storage).
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 200 and not_ready.json()["status"] == "degraded"
            assert not_ready.json()["backends"]["storage"] == "SERVING"
            assert not_ready.json()["backends"]["chat"] == "NOT_SERVING"
            chat, _ = create_server(f"127.0.0.1:{chat_port}", [])
            await chat.start()
            try:
                # The channel reconnects with back-off; probes repeat, so poll like one.
                for _ in range(50):
                    ready = await client.get("/readyz")
                    if ready.json()["backends"]["chat"] == "SERVING":
                        break
                    await asyncio.sleep(0.2)
                assert ready.status_code == 200 and ready.json()["ready"] is True
            finally:
                await chat.stop(0)
    finally:
        await storage.stop(0)


class _Metrics(metrics_pb2_grpc.MetricsServiceServicer):
    async def ListAlerts(
        self, request: metrics_pb2.ListAlertsRequest, context: object
    ) -> metrics_pb2.ListAlertsResponse:
        return metrics_pb2.ListAlertsResponse(alerts=[metrics_pb2.Alert(name="p95", threshold=200)])


async def test_backend_that_starts_later_is_picked_up(make_stack: MakeStack) -> None:
    metrics_port = free_port()
    stack = await make_stack(METRICS_ADDR=f"127.0.0.1:{metrics_port}")
    user = await stack.register()
    before = await stack.client.get("/v1/metrics/alerts", headers=bearer(user["access"]))
    assert before.status_code == 503 and before.json()["code"] == "UNAVAILABLE"
    assert before.headers["retry-after"] == "2"
    server, _ = create_server(
        f"127.0.0.1:{metrics_port}",
        [
            ServiceSpec(
                "studyassist.metrics.v1.MetricsService",
                _Metrics(),  # type: ignore[abstract]
                metrics_pb2_grpc.add_MetricsServiceServicer_to_server,
            )
        ],
    )
    await server.start()
    try:
        # Backends not yet seen are looked for every 2 s in the background (and on a route miss).
        for _ in range(40):
            after = await stack.client.get("/v1/metrics/alerts", headers=bearer(user["access"]))
            if after.status_code != 503:
                break
            await asyncio.sleep(0.25)
        assert after.status_code == 200, after.text
        assert after.json()["alerts"][0]["name"] == "p95"
        paths = (await stack.client.get("/openapi.json")).json()["paths"]
        assert "/v1/metrics/alerts" in paths
    finally:
        await server.stop(0)


@pytest.mark.parametrize("found_by", ["route miss", "periodic refresh"])
async def test_backend_restarted_with_new_rpcs_is_picked_up(tmp_path: Path, found_by: str) -> None:
    storage, _, storage_addr = await start_storage()
    chat, chat_addr = await start_chat()
    metrics_port = free_port()
    # The metrics backend first runs with no service at all: reachable, with no routes.
    bare, _ = create_server(f"127.0.0.1:{metrics_port}", [])
    await bare.start()
    servers = [storage, chat, bare]
    env = {"STORAGE_ADDR": storage_addr, "CHAT_ADDR": chat_addr, "METRICS_ADDR": f"127.0.0.1:{metrics_port}"}
    # "route miss": the periodic re-read is far away, so only a request for an unknown route can find
    # the new RPCs (at most every 5 s); "periodic refresh": nobody asks for the route until /openapi.json
    # lists it, which only the background re-read (every DESCRIPTOR_REFRESH_S) can do.
    env["DESCRIPTOR_REFRESH_S"] = "300" if found_by == "route miss" else "1"
    try:
        async with serve_gateway(env, tmp_path) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            token = (
                await client.post(
                    "/v1/auth/register",
                    json={
                        "email": f"r{uuid.uuid4().hex[:8]}@example.edu.vn",
                        "password": "correct horse",
                        "display_name": "R",
                    },
                )
            ).json()["access_token"]
            before = await client.get("/v1/metrics/alerts", headers=bearer(token))
            assert before.status_code == 404 and before.json()["code"] == "NOT_FOUND", before.text
            assert "/v1/metrics/alerts" not in (await client.get("/openapi.json")).json()["paths"]

            # The same address restarts, now serving the metrics service's RPCs.
            await bare.stop(0)
            servers.remove(bare)
            real, _ = await start_metrics(_Metrics(), metrics_port)  # type: ignore[abstract]
            servers.append(real)

            async def listed() -> bool:
                return "/v1/metrics/alerts" in (await client.get("/openapi.json")).json()["paths"]

            deadline = asyncio.get_running_loop().time() + 10
            answer = None
            while asyncio.get_running_loop().time() < deadline:
                # (In "periodic refresh" mode the route is asked for only once the document lists it.)
                if found_by == "route miss" or await listed():
                    answer = await client.get("/v1/metrics/alerts", headers=bearer(token))
                    if answer.status_code == 200:
                        break
                await asyncio.sleep(0.25)
            assert answer is not None and answer.status_code == 200, answer.text if answer else "never listed"
            assert answer.json()["alerts"][0]["name"] == "p95"
            assert await listed()
    finally:
        for server in servers:
            await server.stop(0)


async def test_request_id_is_the_trace_id_unless_the_client_sends_one(stack: Stack) -> None:
    health = await stack.client.get("/healthz")
    assert health.headers["x-request-id"] == health.headers["x-trace-id"]
    # An error body carries the same id (it comes from the request's context, as the logs' does).
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    refused = await stack.client.get("/v1/sessions", headers=parent)
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] == refused.headers["x-trace-id"] == trace_id
    assert refused.json()["request_id"] == trace_id
    # ... and so does the call to the backend (whose logs print it).
    user = await stack.register()
    listed = await stack.client.get("/v1/sessions", headers=bearer(user["access"]))
    assert listed.status_code == 200
    assert stack.storage.metadata["ListSessions"]["x-request-id"] == listed.headers["x-trace-id"]
    assert stack.storage.metadata["ListSessions"]["traceparent"].split("-")[1] == listed.headers["x-trace-id"]
    # A client's own id still wins; the trace is separate then.
    own = await stack.client.get("/v1/sessions", headers={**bearer(user["access"]), "X-Request-ID": "abc-1"})
    assert own.headers["x-request-id"] == "abc-1" and own.headers["x-trace-id"] != "abc-1"
    assert stack.storage.metadata["ListSessions"]["x-request-id"] == "abc-1"


async def test_unknown_route_is_404_only_when_every_backend_is_known(tmp_path: Path) -> None:
    storage, _, storage_addr = await start_storage()
    # Backends with no HTTP routes at all: reachable, so a missing route is truly missing.
    chat, chat_port = create_server("127.0.0.1:0", [])
    metrics, metrics_port = create_server("127.0.0.1:0", [])
    await chat.start()
    await metrics.start()
    env = {"STORAGE_ADDR": storage_addr, "CHAT_ADDR": f"127.0.0.1:{chat_port}"}
    try:
        async with (
            serve_gateway({**env, "METRICS_ADDR": f"127.0.0.1:{metrics_port}"}, tmp_path) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            missing = await client.get("/v1/nothing/here")
            assert missing.status_code == 404, missing.text
            assert missing.json()["code"] == "NOT_FOUND" and missing.json()["message"].startswith("no route")
            assert (await client.get("/v1/sessions")).status_code == 401  # known routes still answer
        # The same gateway with the metrics service never reached: the route may be the metrics service's.
        async with (
            serve_gateway({**env, "METRICS_ADDR": f"127.0.0.1:{free_port()}"}, tmp_path) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            unavailable = await client.post("/v1/nothing/here", json={})
            assert unavailable.status_code == 503, unavailable.text
            body = unavailable.json()
            assert body["code"] == "UNAVAILABLE" and "metrics" in body["message"]
            assert body["request_id"] == unavailable.headers["x-request-id"]
            # Outside the API prefix the web app still answers.
            assert (await client.get("/chat/x")).status_code == 200
    finally:
        await chat.stop(0)
        await metrics.stop(0)
        await storage.stop(0)


async def test_trace_id_header_continues_the_callers_trace(stack: Stack) -> None:
    first = await stack.client.get("/healthz")
    second = await stack.client.get("/healthz")
    fresh = first.headers["x-trace-id"]
    assert len(fresh) == 32 and int(fresh, 16) != 0
    assert second.headers["x-trace-id"] != fresh  # a new trace per request
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    continued = await stack.client.get("/v1/sessions", headers=parent)
    assert continued.status_code == 401 and continued.headers["x-trace-id"] == trace_id
    # A malformed traceparent is ignored, not an error.
    broken = await stack.client.get("/healthz", headers={"traceparent": "00-zz-xx-01"})
    assert broken.status_code == 200 and len(broken.headers["x-trace-id"]) == 32
    assert broken.headers["x-trace-id"] != trace_id


async def test_response_headers(make_stack: MakeStack) -> None:
    stack = await make_stack(CORS_ORIGINS="https://app.example.edu.vn")
    health = await stack.client.get("/healthz")
    assert len(health.headers["x-request-id"]) == 32
    assert health.headers["x-response-time"].endswith("ms")
    assert "script-src 'self'" in health.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in health.headers["content-security-policy"]
    assert health.headers["x-content-type-options"] == "nosniff"
    hostile = await stack.client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert len(hostile.headers["x-request-id"]) == 32  # not echoed: replaced by a fresh one
    assert (await stack.client.get("/healthz", headers={"X-Request-ID": "abc-1"})).headers["x-request-id"] == "abc-1"

    big = await stack.client.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert big.headers["content-encoding"] == "gzip"
    small = await stack.client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers

    preflight = {"Origin": "https://app.example.edu.vn", "Access-Control-Request-Method": "POST"}
    allowed = await stack.client.options("/v1/sessions", headers=preflight)
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.edu.vn"
    denied = await stack.client.options("/v1/sessions", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in denied.headers


async def test_openapi_and_docs(stack: Stack) -> None:
    document = (await stack.client.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    watch = paths["/v1/files/{file_id}:watch"]["get"]
    assert "text/event-stream" in watch["responses"]["200"]["content"]
    assert [p["name"] for p in watch["parameters"] if p["in"] == "path"] == ["file_id"]
    upload = paths["/v1/files"]["post"]["requestBody"]["content"]
    assert set(upload) == {"application/octet-stream", "multipart/form-data"}
    assert "file_name" in [p["name"] for p in paths["/v1/files"]["post"]["parameters"]]
    assert {"get", "patch", "delete"} <= set(paths["/v1/sessions/{session_id}"])
    session = document["components"]["schemas"]["studyassist.storage.v1.Session"]
    assert session["properties"]["created_at"] == {"type": "string", "format": "date-time"}
    assert "/v1/auth/login" in paths and "CreateUser" not in str(paths)  # unannotated RPCs stay internal
    docs = await stack.client.get("/docs")
    assert docs.headers["content-type"].startswith("text/html")
    assert (
        "/v1/files/{file_id}:watch" in docs.text
        and "<script" not in docs.text
        and "http" not in docs.text.split("<body>")[0]
    )


async def test_static_web_app(make_stack: MakeStack, tmp_path: Path) -> None:
    dist = tmp_path / f"dist-{uuid.uuid4().hex[:6]}"
    stack = await make_stack(WEB_DIST_DIR=str(dist))
    not_built = await stack.client.get("/")
    assert not_built.status_code == 200 and "make web" in not_built.text

    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><div id=root></div>")
    (dist / "assets" / "app.3f9a1c.js").write_text("console.log('hi')")
    (tmp_path / "secret.txt").write_text("no")
    index = await stack.client.get("/")
    assert index.text.startswith("<!doctype html>") and index.headers["cache-control"] == "no-cache"
    asset = await stack.client.get("/assets/app.3f9a1c.js")
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    spa = await stack.client.get("/chat/some-session")
    assert spa.status_code == 200 and "id=root" in spa.text
    assert (await stack.client.get("/assets/missing.js")).status_code == 404
    escape = await stack.client.get("/..%2fsecret.txt")
    assert escape.text != "no"
    api_miss = await stack.client.get("/v1/nothing")
    assert api_miss.status_code == 503 and api_miss.headers["content-type"] == "application/json"  # chat is away
