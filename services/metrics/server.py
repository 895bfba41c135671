"""Wiring: store, alert evaluator, receivers, dashboard servicer, Prometheus endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from studyassist.core.config import CommonSettings
from studyassist.core.server import Server, ServiceSpec, create_server
from studyassist.core.telemetry import Telemetry
from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from metrics.alerts import AlertEvaluator
from metrics.config import Settings
from metrics.prometheus import start_exposition
from metrics.servicer import DEFAULT_WINDOW_S, MetricsServicer, OtlpMetricsReceiver, OtlpTraceReceiver
from metrics.store import MetricStore
from metrics.traces import TraceIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MetricsApp:
    server: Server
    port: int
    http_port: int
    store: MetricStore
    alerts: AlertEvaluator
    traces: TraceIndex


async def build(settings: Settings, common: CommonSettings, telemetry: Telemetry) -> tuple[Server, int]:
    app = await assemble(settings, common, telemetry)
    return app.server, app.port


async def assemble(
    settings: Settings, common: CommonSettings, telemetry: Telemetry, *, clock: Callable[[], float] = time.time
) -> MetricsApp:
    """Build the server and start the Prometheus endpoint and the alert loop (stopped by server.stop)."""
    store = MetricStore(settings.window_s, settings.max_series, clock)
    alerts = AlertEvaluator(store, settings, clock)
    traces = TraceIndex()
    specs = [
        ServiceSpec(
            metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
            MetricsServicer(store, alerts, traces, settings.alert_pool_utilisation),
            metrics_pb2_grpc.add_MetricsServiceServicer_to_server,
        ),
        ServiceSpec(
            metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
            OtlpMetricsReceiver(store),
            metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server,
        ),
        ServiceSpec(
            trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
            OtlpTraceReceiver(store, traces),
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server,
        ),
    ]
    server, port = create_server(
        f"{common.bind_host}:{settings.port}", specs, meter=telemetry.meter, tracer=telemetry.tracer
    )
    http_server, http_port = start_exposition(
        common.bind_host, settings.http_port, store, alerts, min(DEFAULT_WINDOW_S, settings.window_s)
    )
    evaluation = asyncio.create_task(alerts.run(settings.alert_eval_interval_s), name="alert-evaluation")
    log.info("prometheus exposition", extra={"fields": {"http_port": http_port, "path": "/metrics"}})

    async def stop() -> None:
        evaluation.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await evaluation
        await asyncio.to_thread(http_server.shutdown)
        http_server.server_close()

    server.on_stop.append(stop)
    return MetricsApp(server, port, http_port, store, alerts, traces)
