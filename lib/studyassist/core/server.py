"""Building a gRPC server (kept apart from running it, so tests start real servers on port 0).

``create_server(address, services)`` returns ``(server, port)``: a :class:`Server` with health
checking, server reflection and the interceptor that verifies the caller's assertion, maps domain
errors to status codes, times every call and continues the caller's trace. ``run(server)`` serves
until SIGTERM/SIGINT, then drains: health goes NOT_SERVING at once, in-flight calls get the grace
period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import metrics, propagate, trace

from studyassist.core.errors import SERVER_FAULTS, StudyAssistError
from studyassist.core.identity import EXEMPT_PREFIXES, Mesh, audience_of, caller_var, current_mesh, verify_call
from studyassist.core.logs import REQUEST_ID_HEADER, new_request_id, request_id_var

log = logging.getLogger(__name__)

# The health entry liveness probes ask for (deploy/k8s): SERVING from start to shutdown whatever
# the service's dependencies say, while "" and the service names are its readiness (storage's follow
# its database), so an outage of a dependency takes pods out of rotation and never restarts them.
LIVENESS_SERVICE = "studyassist.liveness"

# 64 MiB: large enough for a batch of embeddings, bounded so a client cannot exhaust memory.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One servicer and how to register it: ``add(servicer, server)`` and its full name."""

    name: str
    servicer: object
    add: Callable[[Any, grpc.aio.Server], None]
    # Methods (short names) only the gateway may call: accounts, password hashes.
    gateway_only: frozenset[str] = frozenset()


@dataclass(slots=True)
class Server:
    grpc_server: grpc.aio.Server
    health: HealthServicer
    service_names: list[str]
    # Called after the server stopped serving (close pools, stop batchers, flush telemetry).
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        await self.grpc_server.start()
        for name in [*self.service_names, "", LIVENESS_SERVICE]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        # NOT_SERVING first, so load balancers and probes stop sending new calls while we drain.
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        for hook in self.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")


def _method_parts(full_method: str) -> tuple[str, str]:
    # "/studyassist.chat.v1.ChatService/StreamChat" -> ("studyassist.chat.v1.ChatService", "StreamChat")
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the caller, maps domain errors to status codes, times each call, carries request id
    and trace.

    Every call but the exempt ones (health, reflection, telemetry) must carry a caller assertion
    signed with the mesh key, for one of this server's services (``audiences``), not expired; the
    identity it names is what ``caller_user_id`` returns while the call runs. Missing, forged,
    expired or for another service: UNAUTHENTICATED; a gateway-only method from another service:
    PERMISSION_DENIED.
    """

    def __init__(
        self,
        meter: metrics.Meter,
        tracer: trace.Tracer,
        *,
        mesh: Mesh,
        audiences: frozenset[str],
        gateway_only: frozenset[str] = frozenset(),
    ) -> None:
        self._mesh = mesh
        self._audiences = audiences
        self._gateway_only = gateway_only
        self._duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="Server-side duration of gRPC calls"
        )
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full_method = handler_call_details.method
        if full_method.startswith(EXEMPT_PREFIXES):
            return handler
        return self._wrap(handler, full_method)

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        service, method = _method_parts(full_method)
        attributes = {"rpc.service": service, "rpc.method": method}
        interceptor = self
        gateway_only = full_method in self._gateway_only

        def admit(context: grpc.aio.ServicerContext) -> None:
            # Set (or cleared) on every call, inside the call's own task: nothing carries over.
            caller_var.set(None)
            identity = verify_call(
                context.invocation_metadata(), interceptor._mesh, interceptor._audiences, gateway_only=gateway_only
            )
            caller_var.set(identity)

        def begin(context: grpc.aio.ServicerContext) -> tuple[Any, float]:
            metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            request_id_var.set(metadata.get(REQUEST_ID_HEADER) or new_request_id())
            parent = propagate.extract(metadata)
            span = interceptor._tracer.start_span(
                full_method.lstrip("/"), context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
            )
            return span, time.perf_counter()

        async def fail(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
            if isinstance(exc, StudyAssistError):
                await context.abort(exc.code, exc.message, exc.trailing_metadata())
            log.exception("unhandled error in %s", full_method, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id_var.get()})")

        def finish(span: Any, started: float, context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
            if isinstance(exc, StudyAssistError):
                code = exc.code
            elif isinstance(exc, asyncio.CancelledError):
                code = grpc.StatusCode.CANCELLED
            elif exc is not None and not isinstance(exc, grpc.aio.AbortError):
                code = grpc.StatusCode.INTERNAL
            else:
                code = context.code() or grpc.StatusCode.OK
                if not isinstance(code, grpc.StatusCode):
                    code = grpc.StatusCode(code) if code in grpc.StatusCode else grpc.StatusCode.UNKNOWN
            status = code.name
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            # The span's status is decided here, not by use_span: a caller's mistake or departure
            # is not the server's error.
            if code in SERVER_FAULTS:
                span.set_status(trace.StatusCode.ERROR, status)
                if exc is not None and not isinstance(exc, (StudyAssistError, grpc.aio.AbortError)):
                    span.record_exception(exc)
            span.end()
            elapsed_ms = (time.perf_counter() - started) * 1000
            interceptor._duration.record(elapsed_ms, {**attributes, "rpc.grpc.status": status})

        # grpc-stubs types handlers as the synchronous API; in grpc.aio they are coroutines.
        inner_unary: Any = handler.unary_unary or handler.stream_unary
        if inner_unary is not None:

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                span, started = begin(context)
                error: BaseException | None = None
                try:
                    admit(context)
                    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                        return await inner_unary(request, context)
                except grpc.aio.AbortError:
                    raise
                except BaseException as exc:
                    error = exc
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    await fail(context, exc)
                finally:
                    finish(span, started, context, error)

            factory = (
                grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner_stream: Any = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span, started = begin(context)
            error: BaseException | None = None
            try:
                admit(context)
                with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                    async for response in inner_stream(request, context):
                        yield response
            except grpc.aio.AbortError:
                raise
            except BaseException as exc:
                error = exc
                if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                    raise
                await fail(context, exc)
            finally:
                finish(span, started, context, error)

        factory = (
            grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            streaming,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def create_server(
    address: str,
    services: Sequence[ServiceSpec],
    *,
    meter: metrics.Meter | None = None,
    tracer: trace.Tracer | None = None,
    max_concurrent_rpcs: int | None = None,
) -> tuple[Server, int]:
    """Build (not start) a server on ``address`` ("127.0.0.1:0" picks a free port).

    Its calls are for the services its specs name (``studyassist.storage.v1.StorageService``:
    "storage"): the audience a caller assertion must carry.
    """
    audiences = frozenset(a for spec in services if (a := audience_of(spec.name)) is not None)
    gateway_only = frozenset(f"/{spec.name}/{method}" for spec in services for method in spec.gateway_only)
    interceptor = ServerInterceptor(
        meter or metrics.get_meter("studyassist.server"),
        tracer or trace.get_tracer("studyassist.server"),
        mesh=current_mesh(),
        audiences=audiences,
        gateway_only=gateway_only,
    )
    grpc_server = grpc.aio.server(
        interceptors=[interceptor],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Clients re-resolve DNS when a connection ends: recycling connections lets
            # round-robin clients find pods added by a scale-up.
            ("grpc.max_connection_age_ms", 300_000),
            ("grpc.max_connection_age_grace_ms", 30_000),
        ],
    )
    names = []
    for spec in services:
        spec.add(spec.servicer, grpc_server)
        names.append(spec.name)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, grpc_server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], grpc_server
    )
    try:
        port = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address} (address in use or not local)")
    return Server(grpc_server, health, names), port


async def run(server: Server, *, grace: float, ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully within ``grace`` seconds."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    if ready:
        ready()
    await stopping.wait()
    log.info("shutting down", extra={"fields": {"grace_seconds": grace}})
    await server.stop(grace)
