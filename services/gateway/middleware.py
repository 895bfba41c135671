"""The outermost layer of every response: request id, timing, security headers, per-IP limits.

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
from opentelemetry import metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from studyassist.core.logs import new_request_id, request_id_var

from gateway.ratelimit import RateLimiter
from gateway.responses import HttpError, error_response

log = logging.getLogger(__name__)

CSP = "default-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'"


def csp_allowing_style(style: str) -> str:
    """The CSP plus exactly one inline <style> block, by its hash (pages the gateway renders itself)."""
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    return f"{CSP}; style-src 'self' 'sha256-{digest}'"


SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# A client's id is echoed back and logged: keep it short and printable.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class FrontDoor:
    def __init__(self, app: ASGIApp, limiter: RateLimiter, meter: metrics.Meter) -> None:
        self.app = app
        self.limiter = limiter
        self._duration = meter.create_histogram(
            "http.server.duration", unit="ms", description="Gateway time to response headers"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID_RE.fullmatch(candidate):
                    request_id = candidate
                break
        request_id = request_id or new_request_id()
        token = request_id_var.set(request_id)
        status_seen: list[int] = []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers: list[Any] = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"x-request-id", b"x-response-time")
                ]
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-response-time", f"{elapsed_ms:.2f}ms".encode()))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
                status_seen.append(message["status"])
                self._duration.record(
                    elapsed_ms, {"http.method": scope["method"], "http.status_code": message["status"]}
                )
            await send(message)

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
        finally:
            request_id_var.reset(token)
