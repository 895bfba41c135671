"""What the dashboard needs to draw at once and in the reader's language: the window's timeline
from the slots already held, and alerts as a stable code with the figures behind them."""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.metrics.v1 import metrics_pb2 as otlp
from studyassist.core.channels import create_channel
from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from tests.metrics.helpers import metrics_service
from tests.metrics.test_alerts import calls, synthetic

# 90 slots of 2 s each.
ENV = {"METRICS_WINDOW_S": "180", "ALERT_WINDOW_S": "60", "ALERT_EVAL_INTERVAL_S": "3600"}


async def test_timeline_is_filled_from_the_window_held() -> None:
    now = [1_000_000.0]
    async with (
        metrics_service(ENV, clock=lambda: now[0]) as app,
        create_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        receiver = metrics_service_pb2_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        await receiver.Export(calls("storage", {"OK": 10}))
        now[0] += 30
        await receiver.Export(calls("storage", {"OK": 4, "INTERNAL": 2, "NOT_FOUND": 1}))
        now[0] += 10
        board = await stub.GetDashboard(metrics_pb2.GetDashboardRequest(window_seconds=60))
        points = list(board.timeline)
        # Every slot of the window, oldest first, quiet ones as zero: a chart at once, no "no data".
        assert len(points) == 31 and all(p.seconds == 2.0 for p in points)
        starts = [p.start.ToNanoseconds() for p in points]
        assert starts == sorted(starts) and starts[-1] == int(now[0] // 2 * 2 * 1e9)
        busy = [(p.count, p.errors, p.per_second) for p in points if p.count]
        assert busy == [(10, 0, 5.0), (7, 2, 3.5)]
        assert sum(p.count for p in points) == sum(e.count for e in board.endpoints)
        # A shorter window: only its own slots.
        short = await stub.GetDashboard(metrics_pb2.GetDashboardRequest(window_seconds=20))
        assert [p.count for p in short.timeline if p.count] == [7]


async def test_alerts_carry_a_code_and_their_figures() -> None:
    now = [1_000_000.0]
    async with (
        metrics_service(ENV, clock=lambda: now[0]) as app,
        create_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        quiet = {a.code: dict(a.args) for a in (await stub.ListAlerts(metrics_pb2.ListAlertsRequest())).alerts}
        # No data yet: each rule by its code, no figures.
        assert quiet == {"pool_utilisation": {}, "response_time_p95": {}, "error_rate": {}}
        receiver = metrics_service_pb2_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        await receiver.Export(synthetic(ok=70, failed=30, latency_ms=800, pool_used=19))
        app.alerts.evaluate()
        alerts = {a.code: a for a in (await stub.ListAlerts(metrics_pb2.ListAlertsRequest())).alerts}
        assert all(a.code == a.name and a.state == metrics_pb2.ALERT_STATE_FIRING for a in alerts.values())
        assert dict(alerts["pool_utilisation"].args) == {
            "service": "storage",
            "pool": "main",
            "in_use": "19.0",
            "max": "20",
        }
        assert dict(alerts["response_time_p95"].args) == {"service": "storage", "method": "GetFile", "calls": "100"}
        assert dict(alerts["error_rate"].args) == {"errors": "30", "calls": "100"}
        # The English description stays for logs and API readers.
        assert "30 of 100 calls failed" in alerts["error_rate"].description


async def test_gauges_carry_their_unit() -> None:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "chat"
    scope = resource.scope_metrics.add()
    scope.metrics.add(name="process.memory.rss", unit="By").gauge.data_points.add(as_int=150 * 1024 * 1024)
    hits = scope.metrics.add(name="chat.cache.hits", unit="{lookup}").sum
    hits.is_monotonic, hits.aggregation_temporality = True, otlp.AGGREGATION_TEMPORALITY_DELTA
    hits.data_points.add(as_int=3)
    misses = scope.metrics.add(name="chat.cache.misses", unit="{lookup}").sum
    misses.is_monotonic, misses.aggregation_temporality = True, otlp.AGGREGATION_TEMPORALITY_DELTA
    misses.data_points.add(as_int=1)
    async with metrics_service(ENV) as app, create_channel(f"127.0.0.1:{app.port}") as channel:
        await metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(request)  # type: ignore[no-untyped-call]
        board = await metrics_pb2_grpc.MetricsServiceStub(channel).GetDashboard(metrics_pb2.GetDashboardRequest())
    units = {g.name: (g.unit, g.value) for g in board.gauges}
    assert units["process.memory.rss"] == ("By", 150 * 1024 * 1024)
    assert units["chat.cache.hits"] == ("{lookup}", 3)
    assert units["chat.cache.hit_ratio"] == ("1", 0.75)
