"""Domain errors and the one table that maps them to gRPC and HTTP status codes.

Servicers raise these; ``studyassist.core.server`` turns them into gRPC statuses, and the
gateway turns gRPC statuses into HTTP ones (google/rpc/code.proto). Anything else that escapes
a servicer is a bug and becomes INTERNAL with a generic message, never a stack trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

# Trailing metadata that carries an error's stable reason and its arguments past the status text,
# so a client (the web app, through the gateway) can say it in the user's language.
REASON_KEY = "studyassist-error-reason"
ARGS_KEY = "studyassist-error-args"


class StudyAssistError(Exception):
    """Base domain error. The message is safe to show to the caller.

    ``reason`` is a stable UPPER_SNAKE name of what went wrong (``EMAIL_TAKEN``), ``args`` the values
    a translated sentence needs (``{"max": "100"}``); the English ``message`` stays for API clients
    and logs. Both are optional: a client without a reason falls back to the status code.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, reason: str = "", args: Mapping[str, str | int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.args_map: dict[str, str] = {key: str(value) for key, value in (args or {}).items()}

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return reason_metadata(self.reason, self.args_map)


def reason_metadata(reason: str, args: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The trailing metadata naming ``reason`` and ``args`` (nothing when there is no reason)."""
    if not reason:
        return ()
    items: tuple[tuple[str, str], ...] = ((REASON_KEY, reason),)
    if args:
        items += ((ARGS_KEY, json.dumps(dict(args), ensure_ascii=True, separators=(",", ":"))),)
    return items


def reason_from_metadata(metadata: Iterable[Any] | None) -> tuple[str, dict[str, str]]:
    """(reason, args) read back from a status's trailing metadata; ("", {}) when it names none."""
    reason = ""
    args: dict[str, str] = {}
    for item in metadata or ():
        key, value = item[0], item[1]
        if not isinstance(value, str):
            continue
        if key == REASON_KEY:
            reason = value
        elif key == ARGS_KEY:
            try:
                parsed = json.loads(value)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                args = {str(k): str(v) for k, v in parsed.items()}
    return reason, args


class InvalidArgument(StudyAssistError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(StudyAssistError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(StudyAssistError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(StudyAssistError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(StudyAssistError):
    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(StudyAssistError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(StudyAssistError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(StudyAssistError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(StudyAssistError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


# gRPC status -> HTTP status, as google/rpc/code.proto documents it.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


# Statuses that mean the server failed the call: what error rates, their alert and ERROR spans
# count. Not: CANCELLED (the caller left: a student pressed Stop) or the caller's own mistakes
# (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED,
# FAILED_PRECONDITION, OUT_OF_RANGE, ABORTED). RESOURCE_EXHAUSTED is in: a gRPC service in this
# mesh raises it only when it sheds load it has no capacity for (the embedding queue is full,
# chat's task cap is reached), the shortfall SREs must see; per-user rate limits and oversized
# bodies are the gateway's HTTP 429 and 413, and 4xx never counts.
SERVER_FAULTS: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
