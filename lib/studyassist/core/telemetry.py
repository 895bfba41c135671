"""OpenTelemetry setup: traces and metrics over OTLP/gRPC to the metrics service or a Collector.

Exporting runs on background threads with short timeouts, so a slow or absent collector never
slows a user request; data that cannot be sent is dropped:
- spans: ending a span only appends to a bounded queue (``SPAN_QUEUE_SIZE``; when it is full new
  spans are dropped, never waited for); a worker thread sends batches every ``span_delay_s`` (1 s);
- metrics: instruments aggregate in memory; a reader thread exports every ``export_interval_s``;
- each export attempt, retries included, gives up after ``EXPORT_TIMEOUT_S`` (the exporter's
  default is 10 s with retries), so a hung collector costs a thread a few seconds, not a request.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import psutil
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, ExemplarFilter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

# Seconds one export (retries included) may take before its data is dropped.
EXPORT_TIMEOUT_S = 2.0
# Spans waiting to be sent; beyond it new spans are dropped (memory stays bounded while the collector is down).
SPAN_QUEUE_SIZE = 4096
SPAN_BATCH_SIZE = 512
# Retry an export only when the collector asks us to slow down. The exporter's default also retries
# UNAVAILABLE, re-encoding the whole batch each time (about 50 us per span): with the collector down
# that doubled the export's CPU cost in the service; the next batch follows a second later anyway.
RETRY_ON = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})

# OTLP SpanFlags: the parent's is_remote is known (always, here), and it is set.
_FLAG_HAS_IS_REMOTE = 0x100
_FLAG_IS_REMOTE = 0x200

# Duration histogram buckets. The SDK's default (0, 5, 10, 25, 50, 75, 100, 250, ...) ms puts every
# fast call into one bucket; these resolve p50/p95/p99 from sub-millisecond to a minute.
DURATION_BUCKETS_MS = (
    0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000, 30000, 60000,
)  # fmt: skip


def duration_views() -> list[View]:
    """Views giving every histogram measured in ms or s the duration buckets above."""
    return [
        View(instrument_type=Histogram, instrument_unit="ms",
             aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS_MS)),
        View(instrument_type=Histogram, instrument_unit="s",
             aggregation=ExplicitBucketHistogramAggregation(tuple(b / 1000 for b in DURATION_BUCKETS_MS))),
    ]  # fmt: skip


@dataclass(slots=True)
class Telemetry:
    meter: metrics.Meter
    tracer: trace.Tracer
    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    # Where it exports (host:port); None when telemetry stays in-process.
    endpoint: str | None = None

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def resolve_endpoint(otlp_endpoint: str, metrics_addr: str) -> str | None:
    """Where to send telemetry: the configured endpoint, else the metrics service; None = off."""
    if otlp_endpoint.lower() == "none":
        return None
    return otlp_endpoint or metrics_addr


def _process_gauges(meter: metrics.Meter) -> None:
    process = psutil.Process(os.getpid())

    def rss(_: CallbackOptions) -> Iterable[Observation]:
        yield Observation(process.memory_info().rss)

    def cpu(_: CallbackOptions) -> Iterable[Observation]:
        yield Observation(process.cpu_percent(interval=None))

    meter.create_observable_gauge("process.memory.rss", [rss], unit="By")
    meter.create_observable_gauge("process.cpu.percent", [cpu], unit="%")


def _exemplar_filter() -> ExemplarFilter | None:
    """No exemplars unless OTEL_METRICS_EXEMPLAR_FILTER asks for them. The SDK's default
    ("trace_based") offers every measurement made inside a sampled span to a reservoir: a histogram
    record per request in the gateway and per call in every service, for exemplars that the metrics
    service does not read. A Collector that wants them gets them by that setting."""
    return None if os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER") else AlwaysOffExemplarFilter()


def setup_telemetry(
    service: str,
    endpoint: str | None,
    *,
    export_interval_s: float = 10.0,
    span_delay_s: float = 1.0,
    extra_readers: Iterable[MetricReader] = (),
    trace_sample_ratio: float | None = None,
) -> Telemetry:
    """Providers for one service. ``endpoint`` None keeps everything in-process (tests, off).

    ``trace_sample_ratio`` keeps that fraction of traces (parent-based: a trace is kept or dropped
    whole across the mesh); None leaves it to OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default:
    every trace). Metrics are never sampled, so the dashboard's percentiles stay exact.
    """
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "studyassist",
            # Tells replicas apart (their gauges must not overwrite each other's at the receiver).
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        }
    )
    readers: list[MetricReader] = list(extra_readers)
    sampler = None if trace_sample_ratio is None else ParentBased(TraceIdRatioBased(trace_sample_ratio))
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        target = endpoint.removeprefix("dns:///")
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(
                    endpoint=target, insecure=True, timeout=EXPORT_TIMEOUT_S, retryable_error_codes=RETRY_ON
                ),
                export_interval_millis=export_interval_s * 1000,
                export_timeout_millis=(EXPORT_TIMEOUT_S + 1) * 1000,
            )
        )

        class LeanSpanExporter(OTLPSpanExporter):  # type: ignore[misc]  # the exporter package is untyped
            def _translate_data(self, data: Sequence[ReadableSpan]) -> Any:
                return encode_spans(data)

        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                LeanSpanExporter(
                    endpoint=target, insecure=True, timeout=EXPORT_TIMEOUT_S, retryable_error_codes=RETRY_ON
                ),
                max_queue_size=SPAN_QUEUE_SIZE,
                max_export_batch_size=SPAN_BATCH_SIZE,
                schedule_delay_millis=span_delay_s * 1000,
                export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
            )
        )
    if endpoint:
        instrument_redis(tracer_provider)
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, views=duration_views(), exemplar_filter=_exemplar_filter()
    )
    meter = meter_provider.get_meter(f"studyassist.{service}")
    tracer = tracer_provider.get_tracer(f"studyassist.{service}")
    _process_gauges(meter)
    # Libraries that look up the global providers (the server interceptor's default) see ours.
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return Telemetry(meter, tracer, meter_provider, tracer_provider, endpoint or None)


def instrument_redis(tracer_provider: TracerProvider) -> None:
    """A client span for every Redis command of every service that uses Redis (caches, rate limits,
    chat tasks). Process-wide and once: a later call (a second service in one test process) is a no-op."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()  # type: ignore[no-untyped-call]  # one instance per process
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=tracer_provider)


def _span_flags(parent: Any) -> int:
    flags = _FLAG_HAS_IS_REMOTE
    if parent is not None and parent.is_remote:
        flags |= _FLAG_IS_REMOTE
    return flags


def _set_any_value(target: Any, value: Any) -> None:
    """``target`` (an AnyValue) holds ``value``: the common scalar types here, anything else as the SDK encodes it."""
    kind = type(value)
    if kind is str:
        target.string_value = value
    elif kind is int:
        target.int_value = value
    elif kind is bool:
        target.bool_value = value
    elif kind is float:
        target.double_value = value
    else:
        from opentelemetry.exporter.otlp.proto.common._internal import _encode_value

        target.CopyFrom(_encode_value(value))


def encode_spans(spans: Sequence[ReadableSpan]) -> Any:
    """The OTLP ExportTraceServiceRequest for ``spans``, equal to what the SDK's own encoder builds
    (the tests compare them) at about a third of its CPU.

    The SDK's encoder groups spans by resource and scope through their ``__hash__`` (a JSON dump of
    the resource's attributes, for every span) and builds each span from keyword arguments with
    intermediate messages that are then copied in; here groups are found by identity and each span
    is filled in place. It runs on the export thread, but holds the GIL while it does: every
    microsecond here is taken from the requests being served.
    """
    from opentelemetry.exporter.otlp.proto.common._internal import (
        _encode_instrumentation_scope,
        _encode_resource,
    )
    from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import (
        _SPAN_KIND_MAP,
        _encode_events,
        _encode_links,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    by_resource: dict[int, Any] = {}
    by_scope: dict[tuple[int, int], Any] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        group_key = (id(resource), id(scope))
        scope_spans = by_scope.get(group_key)
        if scope_spans is None:
            resource_spans = by_resource.get(id(resource))
            if resource_spans is None:
                resource_spans = request.resource_spans.add(schema_url=resource.schema_url)
                resource_spans.resource.CopyFrom(_encode_resource(resource))
                by_resource[id(resource)] = resource_spans
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.CopyFrom(_encode_instrumentation_scope(scope))
            if scope is not None and scope.schema_url:
                scope_spans.schema_url = scope.schema_url
            by_scope[group_key] = scope_spans
        context = span.context
        parent = span.parent
        out = scope_spans.spans.add(
            trace_id=context.trace_id.to_bytes(16, "big"),
            span_id=context.span_id.to_bytes(8, "big"),
            name=span.name,
            kind=_SPAN_KIND_MAP[span.kind],
            start_time_unix_nano=span.start_time,
            end_time_unix_nano=span.end_time,
            flags=_span_flags(parent),
        )
        if context.trace_state:
            out.trace_state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
        if parent is not None:
            out.parent_span_id = parent.span_id.to_bytes(8, "big")
        attributes = span.attributes
        if attributes:
            add = out.attributes.add
            for key, value in attributes.items():
                _set_any_value(add(key=key).value, value)
        if span.events:
            out.events.extend(_encode_events(span.events) or ())
        if span.links:
            out.links.extend(_encode_links(span.links) or ())
        status = span.status
        out.status.SetInParent()
        if status.status_code.value:
            out.status.code = status.status_code.value
        if status.description:
            out.status.message = status.description
        if span.dropped_attributes:
            out.dropped_attributes_count = span.dropped_attributes
        if span.dropped_events:
            out.dropped_events_count = span.dropped_events
        if span.dropped_links:
            out.dropped_links_count = span.dropped_links
    return request


class ServerSpan:
    """One request's SERVER span, made by :class:`ServerSpans`: the same span the SDK's tracer
    would record and export, without the SDK's per-span machinery."""

    __slots__ = ("_owner", "attributes", "context", "events", "name", "parent", "start_time", "status")

    def __init__(
        self,
        owner: ServerSpans,
        name: str,
        context: trace.SpanContext,
        parent: trace.SpanContext | None,
        attributes: dict[str, Any],
    ) -> None:
        self._owner = owner
        self.name = name
        self.context = context
        self.parent = parent
        self.attributes = attributes
        self.events: list[Any] = []
        self.status = trace.Status(trace.StatusCode.UNSET)
        self.start_time = time.time_ns()

    def set_status(self, status: trace.Status) -> None:
        if self.status.status_code is not trace.StatusCode.OK:  # OK is final, as in the SDK
            self.status = status

    def record_exception(self, exc: BaseException) -> None:
        """An ``exception`` event with the attributes the SDK's ``Span.record_exception`` gives it."""
        from opentelemetry.sdk.trace import Event

        kind = type(exc)
        module = kind.__module__
        self.events.append(
            Event(
                "exception",
                {
                    "exception.type": f"{module}.{kind.__qualname__}"
                    if module and module != "builtins"
                    else kind.__qualname__,
                    "exception.message": str(exc),
                    "exception.stacktrace": "".join(traceback.format_exception(exc)),
                    "exception.escaped": "False",
                },
            )
        )

    def end(self) -> None:
        self._owner.finish(self)


class ServerSpans:
    """SERVER spans for a process's incoming requests at about a third of the SDK tracer's cost.

    Per gateway request, ``Tracer.start_span`` and ``Span.end`` cost more than everything else the
    telemetry does together: a span object with locks, bounded attribute, event and link containers
    that clean every value, a sampler call, then a second, read-only copy of the span for the span
    processors. Here the attributes are the caller's (plain strings and ints, set once), and one
    ``ReadableSpan`` goes to the provider's span processors when the request ends. What leaves the
    process is the same: trace and span ids from the provider's id generator, the provider's
    sampler decides, W3C context continues through ``context_for`` (a non-recording span carrying
    the span context, so outgoing calls, child spans and log lines all see the trace), and the same
    resource, scope, kind, status and exception events.

    Spans are off (``enabled`` False, ``start`` returns None) when the provider is not the SDK's or
    the SDK is disabled (``OTEL_SDK_DISABLED``). Span processors' ``on_start`` is not called: ours
    (the batch processor, the tests' exporters) do nothing there.
    """

    def __init__(self, provider: trace.TracerProvider, scope: str) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._provider = provider
        self._scope = InstrumentationScope(scope)
        # Where the SDK's own spans go when they end (the processors added to the provider, now or later).
        self._processors: Any = getattr(provider, "_active_span_processor", None)
        self.enabled = (
            isinstance(provider, TracerProvider)
            and not getattr(provider, "_disabled", False)
            and self._processors is not None
        )

    def start(self, name: str, parent_context: Any, attributes: dict[str, Any]) -> ServerSpan | None:
        """A span continuing ``parent_context``'s trace (None: a new trace), or None when spans are
        off. A span the sampler drops still carries its span context on (unsampled) but is never
        recorded."""
        if not self.enabled:
            return None
        provider: Any = self._provider
        parent: trace.SpanContext | None = trace.get_current_span(parent_context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = provider.id_generator.generate_trace_id()
            random_id = provider.id_generator.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_id = parent.trace_flags.random_trace_id
        sampling = provider.sampler.should_sample(parent_context, trace_id, name, trace.SpanKind.SERVER, attributes, ())
        flags = trace.TraceFlags.SAMPLED if sampling.decision.is_sampled() else trace.TraceFlags.DEFAULT
        if random_id:
            flags |= trace.TraceFlags.RANDOM_TRACE_ID
        context = trace.SpanContext(
            trace_id, provider.id_generator.generate_span_id(), False, trace.TraceFlags(flags), sampling.trace_state
        )
        if sampling.attributes:
            attributes = {**attributes, **sampling.attributes}
        span = ServerSpan(self, name, context, parent, attributes)
        if not sampling.decision.is_recording():
            span._owner = _UNRECORDED
        return span

    def finish(self, span: ServerSpan) -> None:
        from opentelemetry.sdk.trace import ReadableSpan

        provider: Any = self._provider
        self._processors.on_end(
            ReadableSpan(
                span.name,
                span.context,
                span.parent,
                provider.resource,
                span.attributes,
                span.events,
                (),
                trace.SpanKind.SERVER,
                None,
                span.status,
                span.start_time,
                time.time_ns(),
                self._scope,
            )
        )


class _Unrecorded:
    """Where a span the sampler dropped ends: nowhere."""

    def finish(self, span: ServerSpan) -> None:
        pass


_UNRECORDED: Any = _Unrecorded()


def context_for(span: ServerSpan) -> Any:
    """An OpenTelemetry context whose current span is ``span`` (to attach while serving it)."""
    return trace.set_span_in_context(trace.NonRecordingSpan(span.context))
