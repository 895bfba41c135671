"""The gateway's SERVER span per request: named by route template, continuing the caller's trace,
current while the request is served, with the status and exception the SDK's tracer would record."""

from __future__ import annotations

import httpx
from gateway.middleware import ROUTE_TEMPLATE_KEY, FrontDoor
from gateway.ratelimit import RateLimiter
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import Receive, Scope, Send
from studyassist.core.telemetry import ServerSpans

PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    scope[ROUTE_TEMPLATE_KEY] = "/v1/items/{item_id}"
    if scope["path"].endswith("/bug"):
        raise RuntimeError("a bug")
    seen = trace.get_current_span().get_span_context()
    body = f"{seen.trace_id:032x}".encode()
    status = 503 if scope["path"].endswith("/down") else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"32")]})
    await send({"type": "http.response.body", "body": body})


def _front_door() -> tuple[FrontDoor, InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    door = FrontDoor(app, RateLimiter(0, 0, None), MeterProvider().get_meter("t"), ServerSpans(provider, "gateway"))
    return door, exporter


async def test_one_server_span_per_request_named_by_its_route() -> None:
    door, exporter = _front_door()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://gw") as client:
        ok = await client.get("/v1/items/42")
        continued = await client.get(
            "/v1/items/7/down", headers={"traceparent": f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"}
        )
        broken = await client.get("/v1/items/1/bug")
    assert ok.status_code == 200 and continued.status_code == 503 and broken.status_code == 500
    # The span is current while the app runs: what it sees is the trace the headers name.
    assert ok.text == ok.headers["x-trace-id"] == ok.headers["x-request-id"]
    assert continued.text == continued.headers["x-trace-id"] == PARENT_TRACE
    first, second, third = exporter.get_finished_spans()
    assert (first.name, first.kind) == ("GET /v1/items/{item_id}", trace.SpanKind.SERVER)
    assert dict(first.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/v1/items/42",
        "http.route": "/v1/items/{item_id}",
        "http.response.status_code": 200,
    }
    assert first.parent is None and first.status.status_code == trace.StatusCode.UNSET
    assert f"{first.context.trace_id:032x}" == ok.headers["x-trace-id"]  # type: ignore[union-attr]
    assert second.parent is not None and second.parent.span_id == 0x00F067AA0BA902B7
    assert second.status.status_code == trace.StatusCode.ERROR
    assert third.status.status_code == trace.StatusCode.ERROR
    assert dict(third.attributes or {})["http.response.status_code"] == 500


async def test_spans_off_still_give_every_request_an_id() -> None:
    door = FrontDoor(
        app, RateLimiter(0, 0, None), MeterProvider().get_meter("t"), ServerSpans(trace.NoOpTracerProvider(), "g")
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://gw") as client:
        reply = await client.get("/v1/items/42")
    assert reply.headers["x-trace-id"] == "0" * 32
    assert len(reply.headers["x-request-id"]) == 32 and reply.headers["x-request-id"] != "0" * 32
