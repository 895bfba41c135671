"""Client channels to other services: default deadline, keepalive, retries, trace and request id.

Every outgoing call gets a deadline (the caller's own ``timeout=`` wins), forwards the current
request id and trace context in metadata, and idempotent methods are retried on UNAVAILABLE.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import grpc
from opentelemetry import propagate

from studyassist.core.identity import (
    MESH_ASSERTION_HEADER,
    USER_ID_HEADER,
    audience_of,
    caller_user_id,
    current_mesh,
    service_subject,
)
from studyassist.core.logs import REQUEST_ID_HEADER, request_id_var
from studyassist.core.server import MAX_MESSAGE_BYTES

__all__ = ["USER_ID_HEADER", "caller_user_id", "create_channel", "stream_unary_response", "user_metadata"]

ResponseT = TypeVar("ResponseT")
ValueT = TypeVar("ValueT")

# The longest wait between two attempts to reach a backend that is down. gRPC's default (120 s,
# growing 1.6x from 1 s) meant that after a backend was away for a few minutes (the launcher
# restarting a crashing chat with back-off, a rollout), callers went on failing fast for up to two
# minutes after it was back: calls fail at once while the channel waits to reconnect. Measured
# after a 40 s outage: the health check passed 5.0 s after the backend was back, 0.6 s with this.
MAX_RECONNECT_BACKOFF_MS = 5_000

# The status grpc.aio makes up when a request write fails in gRPC core.
CORE_WRITE_FAILURE = "Internal error from Core"


def _with_context(details: grpc.aio.ClientCallDetails, default_timeout: float) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    _assert_caller(metadata, details.method)
    request_id = request_id_var.get()
    if request_id and REQUEST_ID_HEADER not in metadata:
        metadata.add(REQUEST_ID_HEADER, request_id)
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for key, value in carrier.items():
        metadata.add(key, value)
    timeout = details.timeout if details.timeout is not None else default_timeout
    return grpc.aio.ClientCallDetails(details.method, timeout, metadata, details.credentials, details.wait_for_ready)


def _assert_caller(metadata: grpc.aio.Metadata, method: str | bytes) -> None:
    """Replace user_metadata()'s request with a signed assertion for the service called: for that
    user, or for this service itself when the call names none. An assertion already there (a test
    sending a forged one, say) is left as it is."""
    user_id = metadata.get(USER_ID_HEADER)
    if USER_ID_HEADER in metadata:
        del metadata[USER_ID_HEADER]
    if MESH_ASSERTION_HEADER in metadata:
        return
    audience = audience_of(method.decode() if isinstance(method, bytes) else method)
    if audience is None:
        return
    mesh = current_mesh()
    subject = user_id if isinstance(user_id, str) and user_id else service_subject(mesh.issuer)
    metadata.add(MESH_ASSERTION_HEADER, mesh.mint(subject, audience))


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
    """An insecure channel whose calls carry a signed caller assertion (studyassist.core.identity)."""
    options = [
        ("grpc.service_config", retry_service_config(idempotent)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    interceptors: list[Any] = [
        kind(default_timeout)
        for kind in (_UnaryUnaryContext, _UnaryStreamContext, _StreamUnaryContext, _StreamStreamContext)
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def user_metadata(user_id: str) -> tuple[tuple[str, str], ...]:
    """Call metadata for a call acting for ``user_id`` (the gateway verified them, or the call being
    served acts for them). A channel from :func:`create_channel` turns it into a signed assertion
    for the service called; sent any other way it names nobody."""
    return ((USER_ID_HEADER, user_id),)


def _finished(step: Coroutine[Any, Any, ValueT]) -> ValueT:
    """The value of a call's status getter once the call is done: it returns without suspending."""
    try:
        step.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    step.close()
    raise RuntimeError("the call has not finished")


def _status_error(call: grpc.aio.Call) -> grpc.aio.AioRpcError | None:
    code = _finished(call.code())
    if code == grpc.StatusCode.OK:
        return None
    return grpc.aio.AioRpcError(
        code,
        _finished(call.initial_metadata()) or grpc.aio.Metadata(),
        _finished(call.trailing_metadata()) or grpc.aio.Metadata(),
        _finished(call.details()),
        None,
    )


async def stream_unary_response(call: grpc.aio.StreamUnaryCall[Any, ResponseT]) -> ResponseT:
    """Await a client-streaming call, raising the status the server ended it with.

    When a server ends such a call while the client is still writing (storage refusing an upload
    that is too large or of the wrong type), the write in flight fails, and grpc.aio then
    overwrites the server's status with INTERNAL "Internal error from Core" if the status arrived
    first (grpc/grpc#36066, still open in grpcio 1.85): the student would see a 500 instead of the
    reason. Every status the call is given is noted as it is set, and the server's is raised instead.
    """
    seen: list[grpc.aio.AioRpcError] = []

    def note(done: grpc.aio.Call) -> None:
        status = _status_error(done)
        if status is not None and status.details() != CORE_WRITE_FAILURE:
            seen.append(status)

    call.add_done_callback(note)
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INTERNAL and exc.details() == CORE_WRITE_FAILURE and seen:
            raise seen[0] from None
        raise
