"""JSON responses and the one error shape every failure takes: ``{code, message, request_id, reason, args}``.

``code`` is the gRPC status name (``NOT_FOUND``, ``UNAUTHENTICATED``, ...) so browsers can switch on
it whether the error came from a backend or from the gateway itself. ``reason`` is a stable
UPPER_SNAKE name of what went wrong (``EMAIL_TAKEN``, ``INVALID_CREDENTIALS``, ...; "" when the
error names none) and ``args`` the values its sentence needs, all strings: the web app says them
in the student's language and keeps the English ``message`` and ``request_id`` for a details view.
A backend's reason travels in the status's trailing metadata (``studyassist.core.errors``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response
from studyassist.core.errors import http_status, reason_from_metadata
from studyassist.core.logs import request_id_var

# A backend that fails without naming a reason: what these codes mean to the user.
_DEFAULT_REASONS = {
    grpc.StatusCode.UNAVAILABLE: "BACKEND_UNAVAILABLE",
    grpc.StatusCode.DEADLINE_EXCEEDED: "BACKEND_TIMEOUT",
}

# Messages of these codes may carry internals (addresses, exception text); clients get a generic one.
_GENERIC_MESSAGES = {
    grpc.StatusCode.UNKNOWN: "internal error",
    grpc.StatusCode.INTERNAL: "internal error",
    grpc.StatusCode.DATA_LOSS: "internal error",
    grpc.StatusCode.UNAVAILABLE: "service unavailable, try again shortly",
}


class HttpError(Exception):
    """An error the gateway answers itself, with a gRPC code name and an HTTP status."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        reason: str = "",
        args: Mapping[str, str | int] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else http_status(code)
        self.headers = headers or {}
        self.reason = reason
        self.reason_args = {key: str(value) for key, value in (args or {}).items()}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.reason, self.reason_args)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(value), status_code=status, headers=headers, media_type="application/json")


def error_body(
    code: grpc.StatusCode, message: str, reason: str = "", args: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "code": code.name,
        "message": message,
        "request_id": request_id_var.get(),
        "reason": reason,
        "args": dict(args or {}),
    }


def error_response(error: HttpError) -> Response:
    return json_response(error.body(), error.status, error.headers)


# Reasons whose HTTP status says more than their gRPC code's (FAILED_PRECONDITION, 400): an upload past
# the student's byte quota is too large for them (413); past the file-count quota it is refused (403),
# not 429, which tells clients and proxies that waiting helps (only deleting files does).
_REASON_STATUS = {"QUOTA_BYTES": 413, "QUOTA_FILES": 403}


def from_rpc_error(error: grpc.aio.AioRpcError, service: str = "") -> HttpError:
    """The HTTP error for a backend's failed call; ``service`` names the backend for the user."""
    code = error.code()
    message = _GENERIC_MESSAGES.get(code) or error.details() or code.name.lower()
    reason, args = reason_from_metadata(error.trailing_metadata())
    if not reason and code in _DEFAULT_REASONS:
        reason = _DEFAULT_REASONS[code]
        if service:
            args = {"service": service}
    return HttpError(code, message, status=_REASON_STATUS.get(reason), reason=reason, args=args)


def invalid(
    message_text: str, reason: str = "INVALID_REQUEST", args: Mapping[str, str | int] | None = None
) -> HttpError:
    return HttpError(grpc.StatusCode.INVALID_ARGUMENT, message_text, reason=reason, args=args)


def too_large(limit: int) -> HttpError:
    return HttpError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request body exceeds {limit} bytes",
        status=413,
        reason="TOO_LARGE",
        args={"limit": limit},
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise invalid("bad Content-Length")
        if int(declared) > limit:
            raise too_large(limit)
    pieces: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise too_large(limit)
        pieces.append(piece)
    return b"".join(pieces)


def parse_json_body(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid("request body is not valid JSON") from None
