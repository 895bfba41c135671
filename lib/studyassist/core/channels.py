"""Client channels to other services: default deadline, keepalive, retries, trace and request id.

Every outgoing call gets a deadline (the caller's own ``timeout=`` wins), forwards the current
request id and trace context in metadata, and idempotent methods are retried on UNAVAILABLE.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import grpc
from opentelemetry import propagate

from studyassist.core.errors import Unauthenticated
from studyassist.core.logs import REQUEST_ID_HEADER, request_id_var
from studyassist.core.server import MAX_MESSAGE_BYTES

USER_ID_HEADER = "x-user-id"


def _with_context(details: grpc.aio.ClientCallDetails, default_timeout: float) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    request_id = request_id_var.get()
    if request_id and REQUEST_ID_HEADER not in metadata:
        metadata.add(REQUEST_ID_HEADER, request_id)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for key, value in carrier.items():
        metadata.add(key, value)
    timeout = details.timeout if details.timeout is not None else default_timeout
    return grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)


# grpc.aio files an interceptor under the first of the four call shapes it implements (an elif
# chain), so one class implementing all four would only ever see unary-unary calls: one per shape.
class _ContextInterceptor:
    def __init__(self, default_timeout: float) -> None:
        self.default_timeout = default_timeout


class _UnaryUnaryContext(_ContextInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_context(details, self.default_timeout), request)


class _UnaryStreamContext(_ContextInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_context(details, self.default_timeout), request)


class _StreamUnaryContext(_ContextInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_context(details, self.default_timeout), request_iterator)


class _StreamStreamContext(_ContextInterceptor, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_context(details, self.default_timeout), request_iterator)


def retry_service_config(idempotent: Iterable[tuple[str, str]]) -> str:
    """A gRPC service config retrying the given (service, method) pairs on UNAVAILABLE."""
    names = [{"service": service, "method": method} for service, method in idempotent]
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if names:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def create_channel(
    target: str,
    *,
    default_timeout: float = 10.0,
    idempotent: Iterable[tuple[str, str]] = (),
) -> grpc.aio.Channel:
    """An insecure channel (the mesh runs inside one trust boundary; mTLS belongs to the platform)."""
    options = [
        ("grpc.service_config", retry_service_config(idempotent)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    interceptors: list[Any] = [
        kind(default_timeout)
        for kind in (_UnaryUnaryContext, _UnaryStreamContext, _StreamUnaryContext, _StreamStreamContext)
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def user_metadata(user_id: str) -> tuple[tuple[str, str], ...]:
    """Call metadata naming the user a call acts for (set only after the gateway verified them)."""
    return ((USER_ID_HEADER, user_id),)


def caller_user_id(context: grpc.aio.ServicerContext) -> str:
    """The user id a call acts for; UNAUTHENTICATED when missing."""
    for key, value in context.invocation_metadata() or ():
        if key == USER_ID_HEADER and isinstance(value, str) and value:
            return value
    raise Unauthenticated("no user in call metadata")
