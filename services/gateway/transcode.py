"""HTTP/JSON <-> gRPC for every annotated route, with no handler per endpoint.

A request message is built from one dict fed to ``json_format.ParseDict`` (unknown fields are an
error -> 400): the body (whole for ``body: "*"``, or under the body field), then query parameters
(dotted field paths; a bare leaf name such as ``file_name`` also finds ``metadata.file_name``),
then path variables, which win. Responses use proto field names (snake_case) and print every
field, defaults included, so browsers see a stable shape.

Shapes: unary -> JSON; server streaming -> SSE (``data: <json>``, heartbeat comments while the
backend is silent but answers its health check, an ``event: error`` carrying the error body
(``gateway.responses``) if the stream fails after it started or its backend stops answering for
``STREAM_STALL_TIMEOUT_S``, and an ``event: close`` with the same body, reason SERVER_DRAINING, when
the gateway starts draining (gateway.drain));
client streaming with a bytes body field -> upload, streamed in chunks of at most 1 MiB.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, json_format, message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from studyassist.core.channels import stream_unary_response, user_metadata

from gateway.auth import Authenticator
from gateway.downloads import send_download
from gateway.drain import Drain
from gateway.middleware import ROUTE_TEMPLATE_KEY
from gateway.ratelimit import RateLimiter
from gateway.responses import (
    HttpError,
    dumps,
    from_rpc_error,
    invalid,
    parse_json_body,
    read_body,
    too_large,
)
from gateway.routes import MethodNotAllowed, Route, RouteTable, load_routes

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# Query parameters the gateway itself consumes, never mapped to fields.
RESERVED_QUERY = frozenset({"access_token"})
# Fields naming a user are set by the gateway from the token (x-user-id), never by clients.
USER_ID_FIELDS = frozenset({"user_id"})
STREAM_TIMEOUT_S = 3600.0
UPLOAD_TIMEOUT_S = 3600.0
MISS_REFRESH_INTERVAL_S = 5.0
# Seconds a client is told to wait when a route's backend may simply not be up yet.
UNREACHED_RETRY_AFTER_S = 2
REFLECTION_TIMEOUT_S = 10.0
# What a stream's read() returns at its end (grpc-stubs does not declare it).
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009


def resolve_field(desc: Any, key: str) -> tuple[list[str], Any] | None:
    """A dotted field path in ``desc``; a bare leaf name also matches one level down."""
    # Descriptors are typed Any: the pure-Python and upb descriptor classes do not unify for mypy.
    path = key.split(".")
    current = desc
    for i, name in enumerate(path):
        if current is None:
            return None
        field = current.fields_by_name.get(name)
        if field is None:
            break
        current = field.message_type
        if i == len(path) - 1:
            return path, field
    if len(path) == 1:
        hits = [
            (outer, inner)
            for outer in desc.fields
            if outer.message_type is not None
            and outer.is_repeated is False
            and not outer.message_type.GetOptions().map_entry
            and not outer.message_type.full_name.startswith("google.protobuf.")
            for inner in outer.message_type.fields
            if inner.name == key
        ]
        if len(hits) == 1:
            outer, inner = hits[0]
            return [outer.name, inner.name], inner
    return None


def _scalar(field: Any, value: str) -> Any:
    if field.type == descriptor.FieldDescriptor.TYPE_BOOL:
        lowered = value.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise invalid(f"{field.name} must be true or false")
    # ParseDict accepts numbers, enum names and well-known types (Timestamp) from strings.
    return value


def _set_path(data: dict[str, Any], path: list[str], value: Any, *, append: bool) -> None:
    target = data
    for name in path[:-1]:
        nested = target.setdefault(name, {})
        if not isinstance(nested, dict):
            raise invalid(f"{'.'.join(path)} conflicts with the request body")
        target = nested
    if append:
        existing = target.setdefault(path[-1], [])
        if not isinstance(existing, list):
            raise invalid(f"{'.'.join(path)} conflicts with the request body")
        existing.append(value)
    else:
        target[path[-1]] = value


def build_request(
    route: Route, path_values: dict[str, str], query: list[tuple[str, str]], body: Any
) -> message.Message:
    desc = route.input_class.DESCRIPTOR
    data: dict[str, Any] = {}
    if route.body == "*":
        if body is not None and not isinstance(body, dict):
            raise invalid("request body must be a JSON object")
        data = dict(body or {})
    elif route.body and body is not None:
        data = {route.body: body}
    if route.body != "*":
        for key, value in query:
            if key in RESERVED_QUERY or key in USER_ID_FIELDS:
                continue
            found = resolve_field(desc, key)
            if found is None:
                raise invalid(f"unknown query parameter {key!r}")
            path, field = found
            if path[0] == route.body:
                raise invalid(f"{key} belongs in the request body")
            if field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
                raise invalid(f"query parameter {key!r} names a message; use its fields")
            repeated = field.is_repeated
            _set_path(data, path, _scalar(field, value), append=repeated)
    for key, value in path_values.items():
        found = resolve_field(desc, key)
        if found is None:
            raise invalid(f"path variable {key!r} has no field")
        _set_path(data, found[0], _scalar(found[1], value), append=False)
    for name in USER_ID_FIELDS:
        data.pop(name, None)
    request = route.input_class()
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise invalid(f"invalid request: {exc}") from None
    return request


def _fill_leaf(msg: message.Message, name: str, value: str) -> None:
    """Set the first empty string field called ``name`` at the top or one level down."""
    desc = msg.DESCRIPTOR
    found = resolve_field(desc, name)
    if found is None or found[1].type != descriptor.FieldDescriptor.TYPE_STRING:
        return
    *outer, leaf = found[0]
    target = msg
    for part in outer:
        target = getattr(target, part)
    if not getattr(target, leaf):
        setattr(target, leaf, value)


# Request messages kept per route (see _bodiless_request); a route's are dropped together when full.
REQUEST_CACHE_SIZE = 512


def _bodiless_request(route: Route, path_values: dict[str, str], request: Request) -> message.Message:
    """The request message of a call without a body, built once per route, path and query string.

    The same reads come again and again (a student's session list, a file's status), and mapping
    the query through ``ParseDict`` costs more than the rest of routing. The message is shared
    between calls: nothing changes a request message once it is built (uploads, which fill in their
    first message, never come here). A request that does not map raises every time, never cached.
    """
    query_string: bytes = request.scope["query_string"]
    if b"access_token" in query_string:  # a stream's token is no key to keep (and rarely repeats)
        return build_request(route, path_values, list(request.query_params.multi_items()), None)
    key = (query_string, *path_values.values())
    found = route.requests.get(key)
    if found is None:
        found = build_request(route, path_values, list(request.query_params.multi_items()), None)
        if len(route.requests) >= REQUEST_CACHE_SIZE:
            route.requests.clear()
        route.requests[key] = found
    return found


@dataclass(slots=True)
class UploadPart:
    file_name: str
    content_type: str
    data: AsyncIterator[bytes]


async def _multipart_file(request: Request, boundary: bytes) -> UploadPart:
    """The first file part of a multipart body, its content streamed as it arrives."""
    events: list[tuple[str, Any]] = []
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "in_file": False, "files": 0}

    def on_part_begin() -> None:
        state["headers"] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, params = parse_options_header(state["headers"].get("content-disposition", b""))
        filename = params.get(b"filename")
        state["in_file"] = filename is not None and state["files"] == 0
        if state["in_file"]:
            state["files"] += 1
            ctype = state["headers"].get("content-type", b"").decode("latin-1")
            events.append(("file", (filename.decode("utf-8", "replace"), ctype)))  # type: ignore[union-attr]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["in_file"]:
            events.append(("data", bytes(data[start:end])))

    def on_part_end() -> None:
        if state["in_file"]:
            events.append(("end", None))
            state["in_file"] = False

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    stream = request.stream()

    async def next_events() -> bool:
        try:
            piece = await stream.__anext__()
        except StopAsyncIteration:
            parser.finalize()
            return False
        try:
            parser.write(piece)
        except Exception as exc:  # python-multipart raises its own error types for malformed bodies
            raise invalid(f"malformed multipart body: {exc}") from None
        return True

    while not any(kind == "file" for kind, _ in events):
        if not await next_events():
            raise invalid("multipart body has no file part")
    start = next(i for i, (kind, _) in enumerate(events) if kind == "file")
    file_name, content_type = events[start][1]
    del events[: start + 1]

    async def data() -> AsyncIterator[bytes]:
        while True:
            while events:
                kind, value = events.pop(0)
                if kind == "end":
                    return
                yield value
            if not await next_events():
                raise invalid("multipart body ended inside the file part")

    return UploadPart(file_name, content_type, data())


async def rechunk(pieces: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """The body regrouped into pieces of exactly ``size`` bytes (the last may be shorter).

    Each byte is copied once, by the join: the held parts are views, never a growing buffer that
    is sliced and shifted for every piece sent.
    """
    held: list[memoryview] = []
    held_bytes = 0
    async for piece in pieces:
        view = memoryview(piece)
        while held_bytes + len(view) >= size:
            cut = size - held_bytes
            held.append(view[:cut])
            yield b"".join(held)
            view = view[cut:]
            held, held_bytes = [], 0
        if view:
            held.append(view)
            held_bytes += len(view)
    if held:
        yield b"".join(held)


class Liveness:
    """Whether a backend answers its health check, asked at most once per ``interval_s`` however
    many silent streams wait on it (a thousand students waiting on slow answers cost one check).

    The check goes over the backend's channel, so with several replicas behind one address it may
    reach another replica than a stream's; the channel's keepalive (studyassist.core.channels)
    still ends a call whose own connection stopped answering.
    """

    def __init__(self, channels: Mapping[str, grpc.aio.Channel], *, interval_s: float, timeout_s: float) -> None:
        self._channels = channels
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._checks: dict[str, tuple[float, asyncio.Task[bool]]] = {}

    def check(self, backend: str) -> asyncio.Task[bool]:
        """The newest check of ``backend``: a finished one younger than the interval, or a new one."""
        now = time.monotonic()
        found = self._checks.get(backend)
        if found is not None and (not found[1].done() or now - found[0] < self._interval_s):
            return found[1]
        task = asyncio.ensure_future(self._probe(backend))
        self._checks[backend] = (now, task)
        return task

    async def _probe(self, backend: str) -> bool:
        try:
            reply = await health_pb2_grpc.HealthStub(self._channels[backend]).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Transcoder:
    def __init__(
        self,
        backends: dict[str, str],
        channels: dict[str, grpc.aio.Channel],
        authenticator: Authenticator,
        limiter: RateLimiter,
        *,
        max_body_bytes: int,
        upload_max_bytes: int,
        heartbeat_s: float,
        stall_s: float | None = None,
        admin_backends: frozenset[str] = frozenset(),
        unary_timeouts: Mapping[str, float] | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.backends = backends
        # Streams end with a closing event when the gateway starts draining (SIGTERM).
        self._drain = drain if drain is not None else Drain()
        self.channels = channels
        self.table = RouteTable(self._bind)
        self.loaded: dict[str, bool] = dict.fromkeys(backends, False)
        self._auth = authenticator
        self._limiter = limiter
        self._max_body = max_body_bytes
        self._upload_max = upload_max_bytes
        self._heartbeat_s = heartbeat_s
        # A stream whose backend shows no sign of life this long ends with a retryable error.
        self._stall_s = stall_s if stall_s is not None else 3 * heartbeat_s
        self._liveness = Liveness(channels, interval_s=heartbeat_s / 2, timeout_s=heartbeat_s)
        # Every route of these backends is for administrators only (a rule per service, so a new
        # RPC of the metrics service is admin-only with no gateway change).
        self._admin_backends = admin_backends
        # Deadline of unary calls per backend; a backend not named here gets the channel's default.
        self._unary_timeouts = dict(unary_timeouts or {})
        self._refresh_lock = asyncio.Lock()
        self._last_miss_refresh = 0.0

    def _bind(self, route: Route) -> Any:
        channel = self.channels[route.backend]
        serialize: Callable[[Any], bytes] = route.input_class.SerializeToString
        deserialize: Callable[[bytes], Any] = route.output_class.FromString
        if route.client_streaming and route.server_streaming:
            return channel.stream_stream(route.rpc_path, serialize, deserialize)
        if route.client_streaming:
            return channel.stream_unary(route.rpc_path, serialize, deserialize)
        if route.server_streaming:
            return channel.unary_stream(route.rpc_path, serialize, deserialize)
        return channel.unary_unary(route.rpc_path, serialize, deserialize)

    async def refresh(self) -> None:
        """Re-read every backend's descriptors (in threads); a backend that is down keeps its routes."""
        async with self._refresh_lock:
            names = list(self.backends)
            results = await asyncio.gather(
                # The reflection client has no deadline of its own: a backend that accepts connections
                # but never answers must not hold every later refresh (its thread ends with the channel).
                *(
                    asyncio.wait_for(asyncio.to_thread(load_routes, name, self.backends[name]), REFLECTION_TIMEOUT_S)
                    for name in names
                ),
                return_exceptions=True,
            )
            for name, result in zip(names, results, strict=True):
                if isinstance(result, BaseException):
                    if self.loaded[name]:
                        log.info("backend descriptors unavailable", extra={"fields": {"backend": name}})
                    continue
                changed = self.table.replace(name, result)
                if changed or not self.loaded[name]:
                    log.info("routes loaded", extra={"fields": {"backend": name, "routes": len(result)}})
                self.loaded[name] = True

    async def refresh_forever(self, interval_s: float) -> None:
        while True:
            # Until every backend answered once, look again soon: they may simply start after us.
            await asyncio.sleep(interval_s if all(self.loaded.values()) else min(interval_s, 2.0))
            try:
                await self.refresh()
            except Exception:
                log.exception("route refresh failed")

    async def _match(self, request: Request) -> tuple[Route, dict[str, str]]:
        path = request.scope["path"]  # not request.url: building a URL object costs more than the match
        try:
            found = self.table.match(request.method, path)
            if found is None and time.monotonic() - self._last_miss_refresh > MISS_REFRESH_INTERVAL_S:
                # Maybe a backend gained an RPC since we last looked.
                self._last_miss_refresh = time.monotonic()
                await self.refresh()
                found = self.table.match(request.method, path)
        except MethodNotAllowed as exc:
            raise HttpError(
                grpc.StatusCode.UNIMPLEMENTED,
                "method not allowed",
                status=405,
                headers={"Allow": ", ".join(exc.allowed)},
            ) from None
        if found is None:
            unreached = sorted(name for name, ok in self.loaded.items() if not ok)
            if unreached:
                # The route may belong to a backend we have not reached yet: "try again", not "no such thing".
                raise HttpError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"no route for {request.method} {path} while {', '.join(unreached)} cannot be reached",
                    headers={"Retry-After": str(UNREACHED_RETRY_AFTER_S)},
                    reason="BACKEND_UNAVAILABLE",
                    args={"service": ", ".join(unreached)},
                )
            raise HttpError(grpc.StatusCode.NOT_FOUND, f"no route for {request.method} {path}", reason="NO_ROUTE")
        request.scope[ROUTE_TEMPLATE_KEY] = found[0].template.template
        return found

    async def handle(self, request: Request) -> Response:
        route, path_values = await self._match(request)
        user_id = await self._auth.authenticate(
            request,
            # EventSource cannot send headers; a download is fetched with one (no token in URLs or logs).
            allow_query_token=route.server_streaming and not route.http_body,
            admin_only=route.backend in self._admin_backends,
        )
        await self._limiter.check_user(user_id)
        metadata = user_metadata(user_id)
        if route.client_streaming:
            if route.server_streaming or not route.body or route.body == "*":
                raise HttpError(grpc.StatusCode.UNIMPLEMENTED, "this streaming shape has no HTTP mapping", status=501)
            query = list(request.query_params.multi_items())
            return await self._upload(request, route, path_values, query, metadata)
        if route.body:
            body = parse_json_body(await read_body(request, self._max_body))
            rpc_request = build_request(route, path_values, list(request.query_params.multi_items()), body)
        else:
            rpc_request = _bodiless_request(route, path_values, request)
        if route.server_streaming:
            if route.http_body:
                return await send_download(route, rpc_request, metadata)
            return await self._stream(route, rpc_request, metadata, user_id)
        try:
            response = await route.call(rpc_request, metadata=metadata, timeout=self._unary_timeouts.get(route.backend))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, route.backend) from None
        return Response(dumps(route.encode(response)), media_type="application/json")

    async def _stream(
        self, route: Route, rpc_request: message.Message, metadata: tuple[tuple[str, str], ...], user_id: str
    ) -> Response:
        call = route.call(rpc_request, metadata=metadata, timeout=STREAM_TIMEOUT_S)
        pending: asyncio.Future[Any] = asyncio.ensure_future(call.read())
        # Wait a little for the first message so an immediate failure (NOT_FOUND, ...) gets its
        # own HTTP status; a slow first message starts the stream anyway so heartbeats can flow.
        done, _ = await asyncio.wait({pending}, timeout=self._heartbeat_s)
        if done:
            try:
                pending.result()
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc, route.backend) from None
        heartbeat_s = self._heartbeat_s
        stall_s = self._stall_s
        auth = self._auth
        liveness = self._liveness
        backend = route.backend
        drain = self._drain

        def error_event(error: HttpError) -> bytes:
            return b"event: error\ndata: " + dumps(error.body()) + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            nonlocal pending
            last_check = time.monotonic()
            # The last sign of life from the backend: a message, or a health check it answered.
            last_alive = time.monotonic()
            draining = asyncio.ensure_future(drain.wait())
            try:
                while True:
                    await asyncio.wait({pending, draining}, timeout=heartbeat_s, return_when=asyncio.FIRST_COMPLETED)
                    if draining.done():
                        # Leaving: the client reconnects (to another replica) or asks again.
                        yield b"event: close\ndata: " + dumps(drain.error().body()) + b"\n\n"
                        return
                    done = {pending} if pending.done() else set()
                    if time.monotonic() - last_check >= heartbeat_s:
                        last_check = time.monotonic()
                        if not await auth.user_is_active(user_id):
                            yield error_event(
                                HttpError(
                                    grpc.StatusCode.UNAUTHENTICATED, "account is not active", reason="ACCOUNT_INACTIVE"
                                )
                            )
                            return
                    if not done:
                        # A slow answer (an LLM thinking) and a hung backend look the same from here:
                        # a heartbeat goes out only when the backend still answers its health check,
                        # so the client's bound on heartbeats (STREAM_STALL_TIMEOUT_S) sees a hang.
                        probe = liveness.check(backend)
                        await asyncio.wait(
                            {pending, probe, draining}, timeout=heartbeat_s, return_when=asyncio.FIRST_COMPLETED
                        )
                        if pending.done() or draining.done():
                            continue
                        if probe.done() and probe.result():
                            last_alive = time.monotonic()
                            yield b": heartbeat\n\n"
                        elif time.monotonic() - last_alive >= stall_s:
                            log.warning("stream backend stopped answering", extra={"fields": {"backend": backend}})
                            yield error_event(
                                HttpError(
                                    grpc.StatusCode.UNAVAILABLE,
                                    f"{backend} stopped answering",
                                    reason="BACKEND_NOT_ANSWERING",
                                    args={"service": backend},
                                )
                            )
                            return
                        continue
                    last_alive = time.monotonic()
                    item = pending.result()
                    if item is _EOF:
                        return
                    yield b"data: " + dumps(route.encode(item)) + b"\n\n"
                    pending = asyncio.ensure_future(call.read())
            except grpc.aio.AioRpcError as exc:
                yield error_event(from_rpc_error(exc, backend))
            except HttpError as exc:
                yield error_event(exc)
            finally:
                # The client went away or the stream ended: stop the backend's work too.
                draining.cancel()
                pending.cancel()
                call.cancel()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _upload(
        self,
        request: Request,
        route: Route,
        path_values: dict[str, str],
        query: list[tuple[str, str]],
        metadata: tuple[tuple[str, str], ...],
    ) -> Response:
        limit = self._upload_max
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        content_type, params = parse_options_header(request.headers.get("content-type", ""))
        if content_type == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise invalid("multipart body without boundary")
            part = await _multipart_file(request, boundary)
        else:
            part = UploadPart("", content_type.decode("latin-1"), request.stream())
        first = build_request(route, path_values, query, None)
        if part.file_name:
            _fill_leaf(first, "file_name", part.file_name)
        if part.content_type and part.content_type != "application/octet-stream":
            _fill_leaf(first, "content_type", part.content_type)
        failure: list[HttpError] = []
        chunk_field = route.body

        async def messages() -> AsyncIterator[message.Message]:
            yield first
            size = 0
            try:
                async for chunk in rechunk(part.data, CHUNK_BYTES):
                    size += len(chunk)
                    if size > limit:
                        raise too_large(limit)
                    msg = route.input_class()
                    setattr(msg, chunk_field, chunk)
                    yield msg
            except HttpError as exc:
                failure.append(exc)
                raise
            except Exception:
                # The client's body broke off: cancel the call rather than store half a file.
                failure.append(invalid("request body ended early"))
                raise
            # (gRPC cancels the call when the request iterator raises: storage never sees a complete file.)

        call = route.call(messages(), metadata=metadata, timeout=UPLOAD_TIMEOUT_S)
        try:
            response = await stream_unary_response(call)
        except grpc.aio.AioRpcError as exc:
            if failure:
                raise failure[0] from None
            raise from_rpc_error(exc, route.backend) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if failure and task is not None and not task.cancelling():
                raise failure[0] from None
            raise
        if failure:
            raise failure[0]
        return Response(dumps(route.encode(response)), media_type="application/json")
