"""OpenTelemetry setup: traces and metrics over OTLP/gRPC to the metrics service or a Collector.

Exporting runs on background threads with short timeouts, so a slow or absent collector never
slows a user request; data that cannot be sent is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import psutil
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


@dataclass(slots=True)
class Telemetry:
    meter: metrics.Meter
    tracer: trace.Tracer
    meter_provider: MeterProvider
    tracer_provider: TracerProvider

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
    extra_readers: Iterable[MetricReader] = (),
) -> Telemetry:
    """Providers for one service. ``endpoint`` None keeps everything in-process (tests, off)."""
    resource = Resource.create({"service.name": service, "service.namespace": "studyassist"})
    readers: list[MetricReader] = list(extra_readers)
    tracer_provider = TracerProvider(resource=resource)
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        target = endpoint.removeprefix("dns:///")
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=target, insecure=True, timeout=2),
                export_interval_millis=export_interval_s * 1000,
                export_timeout_millis=3000,
            )
        )
        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=target, insecure=True, timeout=2),
                max_queue_size=4096,
                schedule_delay_millis=1000,
            )
        )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    meter = meter_provider.get_meter(f"studyassist.{service}")
    tracer = tracer_provider.get_tracer(f"studyassist.{service}")
    _process_gauges(meter)
    # Libraries that look up the global providers (the server interceptor's default) see ours.
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return Telemetry(meter, tracer, meter_provider, tracer_provider)
