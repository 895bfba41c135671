"""JSON responses and the one error shape every failure takes: ``{code, message, request_id}``.

``code`` is the gRPC status name (``NOT_FOUND``, ``UNAUTHENTICATED``, ...) so browsers can switch on
it whether the error came from a backend or from the gateway itself.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response
from studyassist.core.errors import http_status
from studyassist.core.logs import request_id_var

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
        self, code: grpc.StatusCode, message: str, *, status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else http_status(code)
        self.headers = headers or {}


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(value), status_code=status, headers=headers, media_type="application/json")


def error_body(code: grpc.StatusCode, message: str) -> dict[str, str]:
    return {"code": code.name, "message": message, "request_id": request_id_var.get()}


def error_response(error: HttpError) -> Response:
    return json_response(error_body(error.code, error.message), error.status, error.headers)


def from_rpc_error(error: grpc.aio.AioRpcError) -> HttpError:
    code = error.code()
    message = _GENERIC_MESSAGES.get(code) or error.details() or code.name.lower()
    return HttpError(code, message)


def invalid(message_text: str) -> HttpError:
    return HttpError(grpc.StatusCode.INVALID_ARGUMENT, message_text)


def too_large(limit: int) -> HttpError:
    return HttpError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body exceeds {limit} bytes", status=413)


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
