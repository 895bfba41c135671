"""A stopped or hung metrics service never fails a user's call."""

from __future__ import annotations

import asyncio

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from studyassist.core.channels import create_channel
from studyassist.core.server import ServiceSpec, create_server
from studyassist.core.telemetry import Telemetry, setup_telemetry
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from tests.metrics.helpers import build_probe, metrics_service

CALLS = 60


async def call_probe_while_exporting(telemetry: Telemetry) -> list[str]:
    """Calls through a server whose telemetry exports every 50 ms; each call has a 3 s deadline."""
    probe, port = build_probe(telemetry)
    await probe.start()
    try:
        async with create_channel(f"127.0.0.1:{port}") as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            answers = []
            for i in range(CALLS):
                reply = await stub.Embed(embedding_pb2.EmbedRequest(texts=[f"q{i}".encode()]), timeout=3)
                answers.append(reply.model_id)
                if i % 10 == 0:
                    await asyncio.sleep(0.06)  # let an export run in between
            return answers
    finally:
        await probe.stop(grace=0.5)


async def test_stopped_metrics_service_leaves_calls_working() -> None:
    async with metrics_service() as app:
        address = f"127.0.0.1:{app.port}"
        telemetry = setup_telemetry("probe", address, export_interval_s=0.05)
        assert await call_probe_while_exporting(telemetry) == [f"q{i}" for i in range(CALLS)]
        # It really was exporting to the live service (spans go in batches about every second).
        for _ in range(100):
            if app.store.spans_total and app.store.series_count:
                break
            await asyncio.sleep(0.05)
        assert app.store.spans_total > 0 and app.store.series_count > 0
    try:
        # The metrics service is gone now; the same telemetry keeps trying to export to it.
        assert await call_probe_while_exporting(telemetry) == [f"q{i}" for i in range(CALLS)]
        # Flushing to a dead endpoint gives up (reports failure) instead of hanging or raising.
        assert await asyncio.to_thread(telemetry.tracer_provider.force_flush, 10_000) in (True, False)
    finally:
        await asyncio.to_thread(telemetry.shutdown)


class HungMetrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.calls = 0

    async def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.aio.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.calls += 1
        await self.release.wait()
        return metrics_service_pb2.ExportMetricsServiceResponse()


class HungTraces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, release: asyncio.Event) -> None:
        self.release = release
        self.calls = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.calls += 1
        await self.release.wait()
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_hung_collector_leaves_calls_working() -> None:
    release = asyncio.Event()
    metrics, traces = HungMetrics(release), HungTraces(release)
    hung, port = create_server(
        "127.0.0.1:0",
        [
            ServiceSpec("opentelemetry.proto.collector.metrics.v1.MetricsService", metrics,
                        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server),
            ServiceSpec("opentelemetry.proto.collector.trace.v1.TraceService", traces,
                        trace_service_pb2_grpc.add_TraceServiceServicer_to_server),
        ],
    )  # fmt: skip
    await hung.start()
    telemetry = setup_telemetry("probe", f"127.0.0.1:{port}", export_interval_s=0.05)
    try:
        assert await call_probe_while_exporting(telemetry) == [f"q{i}" for i in range(CALLS)]
        assert metrics.calls + traces.calls > 0  # exports did reach the hung collector
    finally:
        release.set()
        await asyncio.to_thread(telemetry.shutdown)
        await hung.stop(grace=0.5)


async def test_python_dash_m_metrics_serves_grpc_and_prometheus() -> None:
    import json

    import httpx
    from studyassist.core.testing import spawn_service
    from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

    service = await asyncio.to_thread(spawn_service, "metrics", {"METRICS_PORT": "0", "METRICS_HTTP_PORT": "0"})
    try:
        http_port = next(json.loads(line)["http_port"] for line in service.log_lines if '"http_port"' in line)
        async with create_channel(service.address) as channel:
            alerts = await metrics_pb2_grpc.MetricsServiceStub(channel).ListAlerts(metrics_pb2.ListAlertsRequest())
        assert sorted(a.name for a in alerts.alerts) == ["error_rate", "pool_utilisation", "response_time_p95"]
        async with httpx.AsyncClient() as http:
            scrape = await http.get(f"http://127.0.0.1:{http_port}/metrics")
        assert scrape.status_code == 200
        assert "studyassist_metrics_series " in scrape.text
    finally:
        assert await asyncio.to_thread(service.stop) == 0
