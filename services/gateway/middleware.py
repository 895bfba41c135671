"""The outermost layer of every response: request id, trace, timing, security headers, per-IP limits.

Each request runs inside a SERVER span (continuing the caller's W3C ``traceparent`` when it sends
one), so every gRPC call made while serving it carries the trace on to the backends; the trace id
goes back in ``X-Trace-Id`` and into the JSON logs, and is the request id (``X-Request-ID``, error
bodies, the ``x-request-id`` sent to backends) unless the client sent one of its own.
``http.server.duration`` is labelled with the route template (``/v1/files/{file_id}``), never the
raw path, so its series stay bounded.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses (SSE, uploads) pass through untouched.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from studyassist.core.logs import new_request_id, request_id_var
from studyassist.core.telemetry import ServerSpans, context_for

from gateway.ratelimit import RateLimiter
from gateway.responses import HttpError, error_response

log = logging.getLogger(__name__)

# worker-src: pdf.js (the source viewer) runs its worker from /assets/, and from nowhere else (no
# blob: or data: workers, no eval). base-uri and form-action: default-src does not cover them, so an
# injected <base> could repoint every relative URL and an injected <form> post anywhere.
CSP = (
    "default-src 'self'; script-src 'self'; worker-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
# Sent on answers to requests that came over TLS: straight to uvicorn, or through a proxy uvicorn
# trusts (FORWARDED_ALLOW_IPS; its X-Forwarded-Proto sets the scheme, from anyone else it is ignored).
# Over plain HTTP it would be ignored by browsers anyway, and must not pin a development host.
# No includeSubDomains: the gateway cannot know what else lives under its domain.
HSTS = (b"strict-transport-security", b"max-age=31536000")


def csp_allowing_style(style: str) -> str:
    """The CSP plus exactly one inline <style> block, by its hash (pages the gateway renders itself)."""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    return f"{CSP}; style-src 'self' 'sha256-{digest}'"


# W3C trace context headers a caller may send to continue its trace.
_TRACE_HEADERS = (b"traceparent", b"tracestate")

SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# A client's id is echoed back and logged: keep it short and printable.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Where the transcoder leaves the template of the API route it matched (Starlette's own routes
# put their Route in scope["route"]).
ROUTE_TEMPLATE_KEY = "studyassist.route_template"
UNMATCHED_ROUTE = "unmatched"
# X-Trace-Id while spans are off (OTEL_SDK_DISABLED): the invalid trace id, as a no-op tracer gives.
_NO_TRACE = "0" * 32


def route_template(scope: Scope) -> str:
    """The route a request matched, as a template; never the raw path (unbounded label values)."""
    template = scope.get(ROUTE_TEMPLATE_KEY)
    if isinstance(template, str):
        return template
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class FrontDoor:
    def __init__(self, app: ASGIApp, limiter: RateLimiter, meter: metrics.Meter, spans: ServerSpans) -> None:
        self.app = app
        self.limiter = limiter
        self.spans = spans
        self._duration = meter.create_histogram(
            "http.server.duration", unit="ms", description="Gateway time to response headers"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        request_id_seen = False
        carrier: dict[str, str] | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if not request_id_seen:  # the first one counts
                    request_id_seen = True
                    candidate = value.decode("latin-1")
                    if _REQUEST_ID_RE.fullmatch(candidate):
                        request_id = candidate
            elif name in _TRACE_HEADERS:
                if carrier is None:
                    carrier = {}
                carrier[name.decode("latin-1")] = value.decode("latin-1")
        status_seen: list[int] = []
        method: str = scope["method"]
        span = self.spans.start(
            method,
            # No trace headers (most requests): nothing to extract, the span starts a new trace.
            propagate.extract(carrier) if carrier is not None else None,
            {"http.request.method": method, "url.path": scope["path"]},
        )
        trace_hex = format(span.context.trace_id, "032x") if span is not None else _NO_TRACE
        trace_id = trace_hex.encode()
        # Without a request id of the client's own, the trace id is the request id: the response
        # header, the error body, every log line and the trace all carry the same one id.
        # (With spans off there is no trace: a fresh id then.)
        request_id = request_id or (trace_hex if span is not None else new_request_id())
        token = request_id_var.set(request_id)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers: list[Any] = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"x-request-id", b"x-response-time", b"x-trace-id")
                ]
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-trace-id", trace_id))
                headers.append((b"x-response-time", f"{elapsed_ms:.2f}ms".encode()))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                if scope.get("scheme") == "https" and HSTS[0] not in present:
                    headers.append(HSTS)
                message = {**message, "headers": headers}
                status: int = message["status"]
                status_seen.append(status)
                route = route_template(scope)
                self._duration.record(
                    elapsed_ms,
                    {"http.route": route, "http.request.method": method, "http.response.status_code": status},
                )
                if span is not None:
                    span.name = f"{method} {route}"
                    span.attributes["http.route"] = route
                    span.attributes["http.response.status_code"] = status
                if status >= 500:
                    if span is not None:
                        span.set_status(trace.Status(trace.StatusCode.ERROR))
                    # One line per failed request, carrying request and trace id (the span is current).
                    log.warning(
                        "request failed",
                        extra={
                            "fields": {"method": method, "route": route, "status": status, "ms": round(elapsed_ms, 2)}
                        },
                    )
            await send(message)

        # The span is current while the request is served (so every gRPC call made for it carries
        # the trace on, and log lines name it) and ends when the response does, an SSE stream
        # included; the histogram above stays time to headers, so a long answer stream does not
        # read as a slow API.
        context_token = otel_context.attach(context_for(span)) if span is not None else None
        try:
            path: str = scope["path"]
            if path.startswith("/v1/") and scope.get("client"):
                try:
                    await self.limiter.check_ip(scope["client"][0])
                except HttpError as exc:
                    await error_response(exc)(scope, receive, send_with_headers)
                    return
            try:
                await self.app(scope, receive, send_with_headers)
            except Exception:
                # A bug, not bad input: log it whole, answer without internals.
                log.exception("unhandled error", extra={"fields": {"path": scope["path"]}})
                if status_seen:
                    raise
                error = HttpError(grpc.StatusCode.INTERNAL, "internal error")
                await error_response(error)(scope, receive, send_with_headers)
        except Exception as exc:
            if span is not None:
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            if span is not None and context_token is not None:
                otel_context.detach(context_token)
                span.end()
            request_id_var.reset(token)
