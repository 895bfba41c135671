"""A bounded index of recent traces: trace id -> the spans received for it, for ``GetTrace``.

Spans of one trace arrive in several exports (each service sends its own batches, a second or so
apart), so spans are grouped by trace id as they come. Memory stays bounded whatever clients send:
at most ``max_traces`` traces, ``max_spans_per_trace`` spans in each (later ones are counted, not
kept) and ``max_spans`` in all; names are cut to ``MAX_NAME_CHARS``. When a cap is reached the
trace first seen longest ago is forgotten.

Everything here runs on the event loop thread; nothing is shared with other threads.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from studyassist.metrics.v1 import metrics_pb2

from metrics.store import any_value_text

MAX_TRACES = 1000
MAX_SPANS_PER_TRACE = 256
MAX_SPANS = 50_000
MAX_NAME_CHARS = 256
TRACE_ID_BYTES = 16
_KIND_NAMES = {int(value): name.removeprefix("SPAN_KIND_") for name, value in Span.SpanKind.items()}
_STATUS_NAMES = {int(value): name.removeprefix("STATUS_CODE_") for name, value in Status.StatusCode.items()}


@dataclass(frozen=True, slots=True)
class StoredSpan:
    span_id: bytes
    parent_span_id: bytes
    service: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status: int
    status_message: str

    def to_proto(self) -> metrics_pb2.TraceSpan:
        start = Timestamp()
        start.FromNanoseconds(self.start_ns)
        return metrics_pb2.TraceSpan(
            span_id=self.span_id.hex(),
            parent_span_id=self.parent_span_id.hex(),
            service=self.service,
            name=self.name,
            kind=_KIND_NAMES.get(self.kind, "UNSPECIFIED"),
            start_time=start,
            duration_ms=max(0, self.end_ns - self.start_ns) / 1e6,
            status=_STATUS_NAMES.get(self.status, "UNSET"),
            status_message=self.status_message,
        )


@dataclass(slots=True)
class _Trace:
    spans: list[StoredSpan] = field(default_factory=list)
    dropped: int = 0


class TraceIndex:
    def __init__(
        self, max_traces: int = MAX_TRACES, max_spans_per_trace: int = MAX_SPANS_PER_TRACE, max_spans: int = MAX_SPANS
    ) -> None:
        self.max_traces = max_traces
        self.max_spans_per_trace = max_spans_per_trace
        self.max_spans = max_spans
        self._traces: OrderedDict[bytes, _Trace] = OrderedDict()
        self._span_count = 0
        self.traces_evicted = 0

    def __len__(self) -> int:
        return len(self._traces)

    @property
    def span_count(self) -> int:
        return self._span_count

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            service = "unknown_service"
            for kv in resource_spans.resource.attributes:
                if kv.key == "service.name":
                    service = any_value_text(kv.value)[:MAX_NAME_CHARS]
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    if len(span.trace_id) == TRACE_ID_BYTES and any(span.trace_id):
                        self._add(service, span)

    def _add(self, service: str, span: Span) -> None:
        entry = self._traces.get(span.trace_id)
        if entry is None:
            while len(self._traces) >= self.max_traces:
                self._evict_oldest()
            entry = self._traces[span.trace_id] = _Trace()
        if len(entry.spans) >= self.max_spans_per_trace:
            entry.dropped += 1
            return
        entry.spans.append(
            StoredSpan(
                span_id=span.span_id[:8],
                parent_span_id=span.parent_span_id[:8],
                service=service,
                name=span.name[:MAX_NAME_CHARS],
                kind=span.kind,
                start_ns=span.start_time_unix_nano,
                end_ns=span.end_time_unix_nano,
                status=span.status.code,
                status_message=span.status.message[:MAX_NAME_CHARS],
            )
        )
        self._span_count += 1
        # Never evict the trace being added to: a cap of total spans below one trace's share still holds.
        while self._span_count > self.max_spans and len(self._traces) > 1:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, oldest = self._traces.popitem(last=False)
        self._span_count -= len(oldest.spans)
        self.traces_evicted += 1

    def get(self, trace_id: bytes) -> metrics_pb2.Trace | None:
        entry = self._traces.get(trace_id)
        if entry is None:
            return None
        spans = sorted(entry.spans, key=lambda s: (s.start_ns, s.end_ns))
        return metrics_pb2.Trace(
            trace_id=trace_id.hex(), spans=[s.to_proto() for s in spans], spans_dropped=entry.dropped
        )
