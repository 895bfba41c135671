"""Routes read from the backends' descriptors: ``google.api.http`` annotations found by server reflection.

Nothing here knows any endpoint by name. For each backend we open a synchronous channel (the
reflection descriptor database is synchronous, so this runs in a worker thread), build a fresh
DescriptorPool from it, and turn every annotated method into a :class:`Route`: HTTP method, a
compiled path template (``/v1/files/{file_id}:watch``), the body rule, streaming shape, and the
message classes to convert JSON to and from.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pool, message, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from gateway.jsonmap import JsonMapper, ToDict

log = logging.getLogger(__name__)

# Services every server exposes that are no business of browsers.
_INFRASTRUCTURE_PREFIXES = ("grpc.",)
# A response of this type is sent as it is: its content_type and data become the HTTP response.
HTTP_BODY = "google.api.HttpBody"


@dataclass(frozen=True, slots=True)
class PathTemplate:
    template: str
    regex: re.Pattern[str]
    fields: tuple[str, ...]
    verb: str
    # More literal characters = more specific; tried first so ``/x/{id}:watch`` beats ``/x/{id}``.
    specificity: tuple[int, int]

    def match(self, path: str) -> dict[str, str] | None:
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        return dict(zip(self.fields, found.groups(), strict=True))


def parse_template(template: str) -> PathTemplate:
    """Compile a google.api.http path template: literals, ``{field}``, ``{field=*}``, ``{field=**}``, ``:verb``."""
    if not template.startswith("/"):
        raise ValueError(f"path template {template!r} must start with '/'")
    last_slash = template.rfind("/")
    tail = template[last_slash:]
    verb = ""
    if ":" in tail and "}" not in tail[tail.rfind(":") :]:
        cut = last_slash + tail.rfind(":")
        template_path, verb = template[:cut], template[cut + 1 :]
    else:
        template_path = template
    parts: list[str] = []
    fields: list[str] = []
    literal = 0
    for segment in template_path.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            name, _, pattern = segment[1:-1].partition("=")
            if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*", name):
                raise ValueError(f"bad field {name!r} in {template!r}")
            if pattern in ("", "*"):
                parts.append("([^/]+)")
            elif pattern == "**":
                parts.append("(.+)")
            else:
                raise ValueError(f"unsupported variable pattern {pattern!r} in {template!r}")
            fields.append(name)
        elif segment == "*":
            parts.append("[^/]+")
        elif segment == "**":
            parts.append(".+")
        else:
            parts.append(re.escape(segment))
            literal += len(segment)
    regex = "/" + "/".join(parts) + (re.escape(":" + verb) if verb else "")
    return PathTemplate(template, re.compile(regex), tuple(fields), verb, (1 if verb else 0, literal))


def _unset_encoder(msg: message.Message) -> Any:
    raise RuntimeError("route has no encoder")


@dataclass(slots=True)
class Route:
    http_method: str
    template: PathTemplate
    backend: str
    rpc_path: str  # "/studyassist.storage.v1.StorageService/GetFile"
    method: descriptor.MethodDescriptor
    input_class: type[message.Message]
    output_class: type[message.Message]
    body: str  # "", "*" or a field name
    client_streaming: bool
    server_streaming: bool
    # The response is google.api.HttpBody: raw bytes with their own content type (a download), not JSON.
    http_body: bool = False
    # Response message -> JSON-ready dict (compiled per type, see jsonmap).
    encode: ToDict = field(default=_unset_encoder, repr=False)
    # The grpc.aio multi-callable for this method on the backend's channel (set by the table).
    call: Any = field(default=None, repr=False)
    # Request messages of bodiless calls by (query string, *path values), built once (transcode).
    requests: dict[tuple[Any, ...], message.Message] = field(default_factory=dict, repr=False, compare=False)

    @property
    def operation_id(self) -> str:
        return self.rpc_path.strip("/").replace("/", ".")


def _bindings(rule: http_pb2.HttpRule) -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for binding in [rule, *rule.additional_bindings]:
        pattern = binding.WhichOneof("pattern")
        if pattern is None:
            continue
        if pattern == "custom":
            found.append((binding.custom.kind.upper(), binding.custom.path, binding.body))
        else:
            found.append((pattern.upper(), getattr(binding, pattern), binding.body))
    return found


def _wait_connected(channel: grpc.Channel, timeout_s: float) -> None:
    """Return once connected; fail at the first connection failure (a backend that is down costs
    milliseconds, not the whole timeout, so it never holds up the others)."""
    seen = threading.Event()
    states: list[grpc.ChannelConnectivity] = []

    def observe(state: grpc.ChannelConnectivity) -> None:
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            states.append(state)
            seen.set()

    channel.subscribe(observe, try_to_connect=True)
    try:
        if not seen.wait(timeout_s) or states[0] != grpc.ChannelConnectivity.READY:
            raise ConnectionError("backend not reachable")
    finally:
        channel.unsubscribe(observe)


def load_routes(backend: str, address: str, *, timeout_s: float = 3.0) -> list[Route]:
    """Blocking: read one backend's descriptors through reflection and build its routes."""
    channel = grpc.insecure_channel(address)
    try:
        _wait_connected(channel, timeout_s)
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        routes: list[Route] = []
        mapper = JsonMapper()
        for service_name in database.get_services():
            if service_name.startswith(_INFRASTRUCTURE_PREFIXES):
                continue
            file_proto = database.FindFileContainingSymbol(service_name)
            service = pool.FindServiceByName(service_name)
            for service_proto in file_proto.service:
                if f"{file_proto.package}.{service_proto.name}".lstrip(".") != service_name:
                    continue
                for method_proto in service_proto.method:
                    if not method_proto.options.HasExtension(annotations_pb2.http):
                        continue
                    method = service.methods_by_name[method_proto.name]
                    for http_method, path, body in _bindings(method_proto.options.Extensions[annotations_pb2.http]):
                        try:
                            template = parse_template(path)
                        except ValueError as exc:
                            log.warning(
                                "skipping route", extra={"fields": {"rpc": method.full_name, "error": str(exc)}}
                            )
                            continue
                        routes.append(
                            Route(
                                http_method=http_method,
                                template=template,
                                backend=backend,
                                rpc_path=f"/{service_name}/{method.name}",
                                method=method,
                                input_class=message_factory.GetMessageClass(method.input_type),
                                output_class=message_factory.GetMessageClass(method.output_type),
                                body=body,
                                client_streaming=method_proto.client_streaming,
                                server_streaming=method_proto.server_streaming,
                                http_body=method.output_type.full_name == HTTP_BODY,
                                encode=mapper.to_dict(method.output_type),
                            )
                        )
        return routes
    finally:
        channel.close()


class MethodNotAllowed(Exception):
    def __init__(self, allowed: list[str]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = allowed


class RouteTable:
    """All backends' routes; each backend's set is replaced whole when it is re-read."""

    def __init__(self, bind: Callable[[Route], Any]) -> None:
        self._bind = bind
        self._by_backend: dict[str, list[Route]] = {}
        self._ordered: list[Route] = []
        self.generation = 0

    @property
    def routes(self) -> list[Route]:
        return self._ordered

    def backends(self) -> list[str]:
        return list(self._by_backend)

    def replace(self, backend: str, routes: list[Route]) -> bool:
        """Install ``backend``'s routes; True when they differ from what it had."""
        old = {(r.http_method, r.template.template, r.rpc_path, r.body) for r in self._by_backend.get(backend, [])}
        new = {(r.http_method, r.template.template, r.rpc_path, r.body) for r in routes}
        # Message classes come from a fresh pool each time: rebind even when shapes look equal,
        # because a restarted backend may have changed a message without changing its routes.
        for route in routes:
            route.call = self._bind(route)
        self._by_backend[backend] = routes
        merged = [r for rs in self._by_backend.values() for r in rs]
        merged.sort(key=lambda r: r.template.specificity, reverse=True)
        self._ordered = merged
        self.generation += 1
        return old != new

    def match(self, http_method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        allowed: list[str] = []
        for route in self._ordered:
            values = route.template.match(path)
            if values is None:
                continue
            if route.http_method == http_method:
                return route, values
            allowed.append(route.http_method)
        if allowed:
            raise MethodNotAllowed(sorted(set(allowed)))
        return None
