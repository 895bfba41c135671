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
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
import psutil
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
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
        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(
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
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=duration_views())
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
