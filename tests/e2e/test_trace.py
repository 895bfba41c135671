"""One trace across the mesh, its duration in the dashboard, and user requests with the metrics service gone.

Every service here is a real process exporting OTLP to a real metrics service (the shared fixtures
turn telemetry off), with short export intervals so the data arrives within a second or two.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from studyassist.core.testing import ServiceProcess, spawn_service

from tests.conftest import spawn_chat, spawn_embedding, spawn_gateway, spawn_storage
from tests.e2e.test_slice import NOTES, sse_events

MESH = ("gateway", "chat", "storage", "embedding")
QUESTION = {"agent_id": "explainer", "message": "What is the PTIT mascot in the queue notes?"}
T = TypeVar("T")


@dataclass
class Mesh:
    metrics: ServiceProcess
    gateway: ServiceProcess
    services: list[ServiceProcess]

    @property
    def url(self) -> str:
        return f"http://{self.gateway.address}"


@pytest.fixture(scope="module")
def mesh(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    metrics = spawn_service("metrics", {"METRICS_PORT": "0", "METRICS_HTTP_PORT": "0"})
    telemetry = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": metrics.address,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    started = [metrics]
    try:
        embedding = spawn_embedding(telemetry)
        started.append(embedding)
        storage = spawn_storage(postgres_url, embedding.address, tmp_path_factory.mktemp("trace-blobs"), telemetry)
        started.append(storage)
        # Chat with Redis (its answer cache): Redis commands are traced too.
        chat_redis = {"REDIS_URL": redis_url, "CHAT_REDIS_PREFIX": f"test:{uuid.uuid4().hex[:10]}:chat:"}
        chat = spawn_chat(storage.address, embedding.address, {**telemetry, **chat_redis})
        started.append(chat)
        gateway = spawn_gateway(
            chat.address,
            storage.address,
            tmp_path_factory.mktemp("trace-gateway"),
            {**telemetry, "METRICS_ADDR": metrics.address},
        )
        started.append(gateway)
        yield Mesh(metrics, gateway, [gateway, chat, storage, embedding])
    finally:
        for service in reversed(started):
            service.stop()


def poll(read: Callable[[], T | None], what: str, timeout_s: float = 30.0) -> T:
    deadline = time.monotonic() + timeout_s
    while (found := read()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)
    return found


def signed_in(client: httpx.Client) -> None:
    email = f"tr{uuid.uuid4().hex[:8]}@stu.ptit.edu.vn"
    registered = client.post(
        "/v1/auth/register", json={"email": email, "password": "mat-khau-dai-1", "display_name": "SV"}
    )
    assert registered.status_code == 201, registered.text
    client.headers["Authorization"] = f"Bearer {registered.json()['access_token']}"


def upload_ready(client: httpx.Client) -> str:
    uploaded = client.post("/v1/files", params={"file_name": "notes.md"}, content=NOTES.encode())
    assert uploaded.status_code == 200, uploaded.text
    file_id: str = uploaded.json()["file_id"]

    def ready() -> str | None:
        status: str = client.get(f"/v1/files/{file_id}").json()["status"]
        return status if status in {"FILE_STATUS_READY", "FILE_STATUS_FAILED"} else None

    assert poll(ready, "the upload to be ingested", 90) == "FILE_STATUS_READY"
    return file_id


def ask(client: httpx.Client) -> tuple[str, list[dict[str, Any]]]:
    with client.stream("POST", "/v1/chat:stream", json=QUESTION) as response:
        assert response.status_code == 200
        events = sse_events(response)
        trace_id = response.headers["x-trace-id"]
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "started" and kinds[-1] == "done", kinds
    return trace_id, events


def test_chat_request_is_one_trace_across_the_mesh_and_in_the_dashboard(mesh: Mesh) -> None:
    with httpx.Client(base_url=mesh.url, timeout=60) as client:
        signed_in(client)
        file_id = upload_ready(client)
        trace_id, _ = ask(client)
        assert len(trace_id) == 32 and int(trace_id, 16) != 0

        seen: list[str] = []

        def whole_trace() -> dict[str, Any] | None:
            reply = client.get(f"/v1/metrics/traces/{trace_id}")
            seen[:] = [reply.text]
            if reply.status_code == 404:
                return None
            assert reply.status_code == 200, reply.text
            found: dict[str, Any] = reply.json()
            return found if set(MESH) <= {span["service"] for span in found["spans"]} else None

        try:
            found = poll(whole_trace, f"spans of {MESH} under trace {trace_id}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer: {seen[-1] if seen else None}") from None
        assert found["trace_id"] == trace_id
        spans = found["spans"]
        by_id = {span["span_id"]: span for span in spans}
        roots = [span for span in spans if not span["parent_span_id"]]
        assert [(r["service"], r["name"], r["kind"]) for r in roots] == [("gateway", "POST /v1/chat:stream", "SERVER")]
        chat = next(s for s in spans if s["name"] == "studyassist.chat.v1.ChatService/StreamChat")
        assert chat["kind"] == "SERVER" and by_id[chat["parent_span_id"]] == roots[0]
        # Chat's calls to storage and embedding are children of its server span.
        for service in ("storage", "embedding"):
            called = [s for s in spans if s["service"] == service and s["kind"] == "SERVER"]
            assert called and all(by_id[s["parent_span_id"]] == chat for s in called), (service, called)
        # Below the service spans: storage's SQL and chat's Redis commands, as CLIENT spans of their own.
        storage_server = {s["span_id"] for s in spans if s["service"] == "storage" and s["kind"] == "SERVER"}
        sql = [s for s in spans if s["service"] == "storage" and s["kind"] == "CLIENT"]
        assert sql and all(s["parent_span_id"] in storage_server for s in sql), sql
        assert any(s["name"].split()[0] == "SELECT" for s in sql), [s["name"] for s in sql]
        redis_calls = [s for s in spans if s["service"] == "chat" and s["kind"] == "CLIENT"]
        assert {"GET", "SET"} <= {s["name"].split()[0] for s in redis_calls}, [s["name"] for s in redis_calls]
        assert all(span["duration_ms"] > 0 for span in spans)

        # Unknown and malformed trace ids are told apart.
        assert client.get(f"/v1/metrics/traces/{uuid.uuid4().hex}").status_code == 404
        malformed = client.get("/v1/metrics/traces/not-a-trace")
        assert malformed.status_code == 400 and malformed.json()["code"] == "INVALID_ARGUMENT"

        def chat_route() -> dict[str, Any] | None:
            dashboard = client.get("/v1/metrics/dashboard", params={"window_seconds": 300}).json()
            for endpoint in dashboard["endpoints"]:
                if (endpoint["service"], endpoint["method"]) == ("gateway", "POST /v1/chat:stream"):
                    return endpoint if int(endpoint["count"]) >= 1 else None
            return None

        endpoint = poll(chat_route, "the gateway's chat route in the dashboard")
        assert endpoint["rpc_service"] == "http"
        assert 0 < endpoint["p50_ms"] <= endpoint["p95_ms"] <= endpoint["p99_ms"]
        assert int(endpoint["errors"]) == 0
        # The route template labels the series, never a raw path (file ids would make one series per file).
        dashboard = client.get("/v1/metrics/dashboard").json()
        methods = {e["method"] for e in dashboard["endpoints"] if e["service"] == "gateway"}
        assert "GET /v1/files/{file_id}" in methods
        assert not any(file_id in method for method in methods), methods


def test_user_requests_succeed_with_the_metrics_service_stopped(mesh: Mesh) -> None:
    assert mesh.metrics.stop() == 0
    with httpx.Client(base_url=mesh.url, timeout=30) as client:
        signed_in(client)
        assert client.get("/v1/sessions").status_code == 200
        upload_ready(client)
        _, events = ask(client)
        assert any("citations" in event for event in events)
        # Only the metrics routes themselves are unavailable, and they say so at once.
        dashboard = client.get("/v1/metrics/dashboard")
        assert dashboard.status_code == 503 and dashboard.json()["code"] == "UNAVAILABLE"
    # The failed request is logged as one JSON line carrying its request id and trace id.
    trace_id, request_id = dashboard.headers["x-trace-id"], dashboard.headers["x-request-id"]

    def failure_logged() -> list[dict[str, Any]] | None:
        lines = [json.loads(line) for line in list(mesh.gateway.log_lines) if trace_id in line]
        return lines or None

    logged = poll(failure_logged, "the gateway's log line for the failed request", 5)
    assert [(e["msg"], e["request_id"], e["status"]) for e in logged] == [("request failed", request_id, 503)]
    for service in mesh.services:
        assert service.process.poll() is None, service.module
