"""The compiled proto->JSON mapping prints exactly what json_format prints, for every API message."""

from __future__ import annotations

import math
from typing import Any

from gateway.jsonmap import JsonMapper
from google.protobuf import descriptor, json_format, message
from hypothesis import given, settings
from hypothesis import strategies as st
from studyassist.chat.v1 import chat_pb2
from studyassist.metrics.v1 import metrics_pb2
from studyassist.storage.v1 import storage_pb2

MODULES = [storage_pb2, chat_pb2, metrics_pb2]
TYPES = [
    cls
    for module in MODULES
    for cls in vars(module).values()
    if isinstance(cls, type) and issubclass(cls, message.Message)
]


def _fill(msg: message.Message, draw: Any, depth: int = 0) -> None:
    for field in msg.DESCRIPTOR.fields:
        if draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(msg, field.name)[draw(st.text(max_size=5))] = draw(st.text(max_size=5))
            continue
        count = draw(st.integers(0, 2)) if field.is_repeated else 1
        for _ in range(count):
            if field.message_type is not None:
                if field.message_type.full_name == "google.protobuf.Timestamp":
                    value = getattr(msg, field.name).add() if field.is_repeated else getattr(msg, field.name)
                    value.seconds = draw(st.integers(0, 4_000_000_000))
                    value.nanos = draw(st.sampled_from([0, 1000, 123_000_000, 5]))
                elif depth < 3:
                    child = getattr(msg, field.name).add() if field.is_repeated else getattr(msg, field.name)
                    _fill(child, draw, depth + 1)
                    if not field.is_repeated:
                        child.SetInParent()
                continue
            value = _scalar(field, draw)
            if field.is_repeated:
                getattr(msg, field.name).append(value)
            else:
                setattr(msg, field.name, value)


def _scalar(field: Any, draw: Any) -> Any:
    fd = descriptor.FieldDescriptor
    if field.type == fd.TYPE_ENUM:
        return draw(st.sampled_from([v.number for v in field.enum_type.values]))
    if field.type == fd.TYPE_BYTES:
        return draw(st.binary(max_size=8))
    if field.type == fd.TYPE_STRING:
        return draw(st.text(max_size=8))
    if field.type == fd.TYPE_BOOL:
        return draw(st.booleans())
    if field.type in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
        return draw(st.sampled_from([0.0, 0.1, -2.5, 1e20, math.inf, -math.inf, math.nan, 200.0]))
    if field.type in (fd.TYPE_INT64, fd.TYPE_SINT64, fd.TYPE_SFIXED64):
        return draw(st.integers(-(2**63), 2**63 - 1))
    if field.type in (fd.TYPE_UINT64, fd.TYPE_FIXED64):
        return draw(st.integers(0, 2**64 - 1))
    if field.type in (fd.TYPE_UINT32, fd.TYPE_FIXED32):
        return draw(st.integers(0, 2**32 - 1))
    return draw(st.integers(-(2**31), 2**31 - 1))


def _same(a: Any, b: Any) -> bool:
    # NaN != NaN; json_format prints it as the string "NaN" anyway, so plain equality holds.
    return bool(a == b)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(TYPES), st.data())
def test_matches_json_format(cls: type[message.Message], data: st.DataObject) -> None:
    msg = cls()
    _fill(msg, data.draw)
    expected = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert _same(JsonMapper().to_dict(cls.DESCRIPTOR)(msg), expected)


def test_covers_every_api_message() -> None:
    mapper = JsonMapper()
    assert len(TYPES) > 40
    for cls in TYPES:
        assert mapper.to_dict(cls.DESCRIPTOR)(cls()) == json_format.MessageToDict(
            cls(), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )


def test_field_names_that_are_python_keywords_still_map() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="kw_test.proto", package="kwtest", syntax="proto3")
    kind = file.message_type.add(name="Route")
    kind.field.add(name="from", number=1, type=descriptor.FieldDescriptor.TYPE_STRING, label=1)
    kind.field.add(name="hops", number=2, type=descriptor.FieldDescriptor.TYPE_INT64, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("kwtest.Route"))
    msg = cls()
    # By name: the stubs (types-protobuf) know no fields of a message built at run time.
    setattr(msg, "hops", 3)  # noqa: B010
    setattr(msg, "from", "Hà Nội")
    assert JsonMapper().to_dict(cls.DESCRIPTOR)(msg) == {"from": "Hà Nội", "hops": "3"}


def test_timestamps_printed_again_from_the_cache_are_the_same(monkeypatch: Any) -> None:
    from gateway import jsonmap
    from google.protobuf.timestamp_pb2 import Timestamp

    monkeypatch.setattr(jsonmap, "TIMESTAMP_CACHE_SIZE", 3)
    monkeypatch.setattr(jsonmap, "_TIMESTAMP_TEXT", {})
    stamps = [Timestamp(seconds=s, nanos=n) for s in (0, 1_700_000_000, 253402300799) for n in (0, 5, 123_000_000)]
    stamps.append(Timestamp(seconds=-1, nanos=0))
    for _ in range(2):
        for stamp in stamps:
            assert jsonmap._timestamp(stamp) == stamp.ToJsonString()
    assert len(jsonmap._TIMESTAMP_TEXT) <= 3
