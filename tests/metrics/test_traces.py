"""The recent-trace index behind GetTrace: grouping by trace id, caps, oldest evicted first, bad ids."""

from __future__ import annotations

import grpc
import pytest
from metrics.traces import TraceIndex
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from studyassist.core.channels import create_channel
from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from tests.metrics.helpers import metrics_service


def trace_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def export(service: str, spans: list[Span]) -> ExportTraceServiceRequest:
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    )


def span(trace: int, number: int, *, parent: int = 0, start_ms: int = 0, error: bool = False) -> Span:
    return Span(
        trace_id=trace_id(trace),
        span_id=number.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=f"op{number}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1_700_000_000_000_000_000 + start_ms * 1_000_000,
        end_time_unix_nano=1_700_000_000_000_000_000 + (start_ms + 5) * 1_000_000,
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET, message="boom" * error),
    )


def test_spans_from_several_exports_group_under_their_trace() -> None:
    index = TraceIndex()
    index.add(export("gateway", [span(1, 1, start_ms=0), span(2, 9)]))
    index.add(export("chat", [span(1, 2, parent=1, start_ms=2, error=True)]))
    found = index.get(trace_id(1))
    assert found is not None and found.trace_id == trace_id(1).hex()
    assert [(s.service, s.name, s.kind, s.status) for s in found.spans] == [
        ("gateway", "op1", "SERVER", "UNSET"),
        ("chat", "op2", "SERVER", "ERROR"),
    ]
    assert found.spans[1].parent_span_id == found.spans[0].span_id and found.spans[0].parent_span_id == ""
    assert found.spans[1].duration_ms == pytest.approx(5.0) and found.spans[1].status_message == "boom"
    assert [s.name for s in index.get(trace_id(2)).spans] == ["op9"]  # type: ignore[union-attr]
    assert index.get(trace_id(3)) is None


def test_caps_bound_memory_and_evict_the_oldest_trace() -> None:
    index = TraceIndex(max_traces=3, max_spans_per_trace=4, max_spans=10)
    for t in range(1, 6):
        index.add(export("svc", [span(t, 1)]))
    assert len(index) == 3 and index.get(trace_id(1)) is None and index.get(trace_id(2)) is None
    assert index.get(trace_id(5)) is not None
    # One trace cannot grow past its cap; the rest is counted.
    index.add(export("svc", [span(5, n) for n in range(2, 12)]))
    kept = index.get(trace_id(5))
    assert kept is not None and len(kept.spans) == 4 and kept.spans_dropped == 7
    # The total cap evicts whole old traces, never the one being filled.
    index.add(export("svc", [span(6, n) for n in range(1, 5)]))
    index.add(export("svc", [span(7, n) for n in range(1, 5)]))
    assert index.span_count <= 10 and index.get(trace_id(7)) is not None and index.get(trace_id(4)) is None
    # Spans without a valid trace id are ignored.
    before = index.span_count
    index.add(export("svc", [Span(trace_id=b"\0" * 16, span_id=b"x" * 8), Span(trace_id=b"short", span_id=b"y" * 8)]))
    assert index.span_count == before


async def test_get_trace_rpc() -> None:
    async with metrics_service() as app:
        app.traces.add(export("gateway", [span(42, 1)]))
        async with create_channel(f"127.0.0.1:{app.port}") as channel:
            stub = metrics_pb2_grpc.MetricsServiceStub(channel)
            found = await stub.GetTrace(metrics_pb2.GetTraceRequest(trace_id=trace_id(42).hex().upper()))
            assert [s.service for s in found.spans] == ["gateway"]
            for bad in ("", "xyz", "00" * 16, "ab" * 17):
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.GetTrace(metrics_pb2.GetTraceRequest(trace_id=bad))
                assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.GetTrace(metrics_pb2.GetTraceRequest(trace_id=trace_id(43).hex()))
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
