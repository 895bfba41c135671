"""Protobuf -> JSON-ready dicts, compiled once per message type.

``json_format.MessageToDict`` walks descriptors and options for every field of every message
(about 1 ms for a page of 20 sessions, the gateway's largest cost per request). This builds,
per message type, a flat plan of (field, converter) and reuses it. Output is identical to
``MessageToDict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)``
(tests compare them); well-known types other than Timestamp and Duration are handed to json_format.
"""

from __future__ import annotations

import base64
import functools
import keyword
import math
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor, json_format, message
from google.protobuf.internal import type_checkers

FD = descriptor.FieldDescriptor
ToDict = Callable[[message.Message], Any]
_INT64 = {FD.CPPTYPE_INT64, FD.CPPTYPE_UINT64}


def _float(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _float32(value: float) -> Any:
    if math.isfinite(value):
        return type_checkers.ToShortestFloat(value)
    return _float(value)


# Up to 9999-12-31T23:59:59Z; earlier than 1970 goes the slow, general way.
_MAX_TIMESTAMP_S = 253402300799


# Timestamps already printed, by (seconds, nanos): the same rows are listed again and again (a
# student's sessions, files, messages), and a lookup costs a tenth of printing one. Cleared when full.
_TIMESTAMP_TEXT: dict[tuple[int, int], str] = {}
TIMESTAMP_CACHE_SIZE = 65_536


def _timestamp(msg: Any) -> str:
    """RFC 3339 exactly as Timestamp.ToJsonString prints it (0, 3, 6 or 9 fraction digits), faster."""
    key = (msg.seconds, msg.nanos)
    text = _TIMESTAMP_TEXT.get(key)
    if text is None:
        text = _print_timestamp(msg, *key)
        if len(_TIMESTAMP_TEXT) >= TIMESTAMP_CACHE_SIZE:
            _TIMESTAMP_TEXT.clear()
        _TIMESTAMP_TEXT[key] = text
    return text


def _print_timestamp(msg: Any, seconds: int, nanos: int) -> str:
    if not 0 <= seconds <= _MAX_TIMESTAMP_S or not 0 <= nanos < 1_000_000_000:
        return str(msg.ToJsonString())
    # The date from a small cache (a page of sessions spans few days), the time by arithmetic:
    # strftime(gmtime()) per timestamp was most of the cost of a page of 20 sessions.
    days, in_day = divmod(seconds, 86_400)
    date = _date(days)
    hours, rest = divmod(in_day, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{date}T{hours:02d}:{minutes:02d}:{secs:02d}"
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


@functools.lru_cache(maxsize=4096)
def _date(days_since_1970: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(days_since_1970 * 86_400))


def _wkt_via_json_format(msg: message.Message) -> Any:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _duration(msg: Any) -> str:
    return str(msg.ToJsonString())


# Message types converted by a plain function, never compiled.
_DIRECT: dict[str, Callable[[Any], Any]] = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": _duration,
}


def _map_converter(value_fn: Callable[[Any], Any] | None, bool_keys: bool) -> Callable[[Any], dict[str, Any]]:
    def convert_map(mapping: Any) -> dict[str, Any]:
        return {
            (("true" if k else "false") if bool_keys else str(k)): (value_fn(v) if value_fn else v)
            for k, v in mapping.items()
        }

    return convert_map


class JsonMapper:
    """Compiles and caches converters; one per descriptor pool (i.e. per backend load)."""

    def __init__(self) -> None:
        self._plans: dict[str, ToDict] = {}

    def to_dict(self, desc: Any) -> ToDict:
        found = self._plans.get(desc.full_name)
        if found is not None:
            return found
        if desc.full_name == "google.protobuf.Timestamp":
            converter: ToDict = _timestamp
        elif desc.full_name == "google.protobuf.Duration":
            converter = lambda m: m.ToJsonString()  # type: ignore[attr-defined]  # noqa: E731
        elif desc.full_name.startswith("google.protobuf."):
            converter = _wkt_via_json_format
        else:
            converter = self._compile(desc)
        self._plans[desc.full_name] = converter
        return converter

    def _value(self, field: Any) -> Callable[[Any], Any] | None:
        """How one value of ``field`` converts; None = as is."""
        if field.cpp_type == FD.CPPTYPE_MESSAGE:
            message_type = field.message_type
            # Looked up at call time, not compiled now: a message may contain itself.
            return lambda v: self.to_dict(message_type)(v)
        if field.cpp_type == FD.CPPTYPE_ENUM:
            enum = field.enum_type
            if enum.full_name == "google.protobuf.NullValue":
                return lambda v: None
            names = {v.number: v.name for v in enum.values}
            return lambda v: names.get(v, v)
        if field.type == FD.TYPE_BYTES:
            return lambda v: base64.b64encode(v).decode()
        if field.cpp_type in _INT64:
            return str
        if field.cpp_type == FD.CPPTYPE_FLOAT:
            return _float32
        if field.cpp_type == FD.CPPTYPE_DOUBLE:
            return _float
        return None

    def _compile(self, desc: Any) -> ToDict:
        """One Python function per message type, generated as source: the fields in declaration
        order, ``HasField`` only for fields with presence, a converter call only where a value needs
        one. The loop over a field plan that did this before (a tuple unpack, two tests and a
        ``getattr`` by name per field) took twice as long for a page of sessions."""
        if not all(f.name.isidentifier() and not keyword.iskeyword(f.name) for f in desc.fields):
            return self._compile_plan(desc)  # not reachable as attributes (protoc allows "from", ...)
        names: dict[str, Any] = {}
        lines = ["def convert(m):", "    out = {}"]
        for index, field in enumerate(desc.fields):
            name, key, fn = field.name, repr(field.name), f"f{index}"
            message_type = field.message_type
            if message_type is not None and message_type.GetOptions().map_entry:
                bool_keys = message_type.fields_by_name["key"].cpp_type == FD.CPPTYPE_BOOL
                names[fn] = _map_converter(self._value(message_type.fields_by_name["value"]), bool_keys)
                lines.append(f"    out[{key}] = {fn}(m.{name})")
                continue
            if message_type is not None and message_type.full_name not in _DIRECT:
                # Looked up when called, not compiled now: a message may contain itself.
                names[f"get{index}"] = functools.partial(self.to_dict, message_type)
                value_fn: Callable[[Any], Any] | None = None
                lines.append(f"    {fn} = get{index}()")
            else:
                value_fn = _DIRECT[message_type.full_name] if message_type is not None else self._value(field)
                if value_fn is not None:
                    names[fn] = value_fn
            converted = message_type is not None or value_fn is not None
            if field.is_repeated:
                if converted:
                    lines.append(f"    out[{key}] = [{fn}(v) for v in m.{name}]")
                else:
                    lines.append(f"    out[{key}] = list(m.{name})")
            elif field.has_presence:
                lines.append(f"    if m.HasField({key}):")
                lines.append(f"        out[{key}] = {fn}(m.{name})" if converted else f"        out[{key}] = m.{name}")
            else:
                lines.append(f"    out[{key}] = {fn}(m.{name})" if converted else f"    out[{key}] = m.{name}")
        lines.append("    return out")
        exec("\n".join(lines), names)  # the source is built above from descriptor field names
        converter: ToDict = names["convert"]
        return converter

    def _compile_plan(self, desc: Any) -> ToDict:
        """The general way (a field name that is not a Python identifier cannot be an attribute)."""
        plan: list[tuple[str, int, bool, Callable[[Any], Any] | None]] = []
        for field in desc.fields:
            message_type = field.message_type
            if message_type is not None and message_type.GetOptions().map_entry:
                key_field = message_type.fields_by_name["key"]
                value_fn = self._value(message_type.fields_by_name["value"])
                bool_keys = key_field.cpp_type == FD.CPPTYPE_BOOL

                def convert_map(
                    mapping: Any, value_fn: Callable[[Any], Any] | None = value_fn, bool_keys: bool = bool_keys
                ) -> dict[str, Any]:
                    return {
                        (("true" if k else "false") if bool_keys else str(k)): (value_fn(v) if value_fn else v)
                        for k, v in mapping.items()
                    }

                plan.append((field.name, 2, False, convert_map))
            elif field.is_repeated:
                plan.append((field.name, 1, False, self._value(field)))
            else:
                plan.append((field.name, 0, field.has_presence, self._value(field)))

        def convert(msg: message.Message) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, kind, presence, fn in plan:
                if kind == 0:
                    if presence and not msg.HasField(name):
                        continue
                    value = getattr(msg, name)
                    out[name] = fn(value) if fn is not None else value
                elif kind == 1:
                    values = getattr(msg, name)
                    out[name] = [fn(v) for v in values] if fn is not None else list(values)
                else:
                    out[name] = fn(getattr(msg, name))  # type: ignore[misc]
            return out

        return convert
