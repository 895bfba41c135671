"""Alert rules fire above their thresholds and clear again; the pool-size recommendation follows."""

from __future__ import annotations

import asyncio
import logging

import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as otlp
from studyassist.core.channels import create_channel
from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from tests.metrics.helpers import metrics_service

ALERT_WINDOW_S = 10
ENV = {"METRICS_WINDOW_S": "90", "ALERT_WINDOW_S": str(ALERT_WINDOW_S), "ALERT_EVAL_INTERVAL_S": "3600"}


def _attrs(**values: str) -> list[KeyValue]:
    return [KeyValue(key=k.replace("_", "."), value=AnyValue(string_value=v)) for k, v in values.items()]


def _add_duration_points(
    metric: otlp.Metric, counts_by_attributes: list[tuple[list[KeyValue], int]], latency_ms: float
) -> None:
    """Delta histogram points: each count of calls, all lasting ``latency_ms``, with its attributes."""
    metric.histogram.aggregation_temporality = otlp.AGGREGATION_TEMPORALITY_DELTA
    bounds = [100.0, 500.0, 1000.0]
    bucket = next(i for i, bound in enumerate([*bounds, float("inf")]) if latency_ms <= bound)
    for attributes, count in counts_by_attributes:
        if count:
            counts = [0] * 4
            counts[bucket] = count
            point = metric.histogram.data_points.add(
                count=count, sum=count * latency_ms, min=latency_ms, max=latency_ms, explicit_bounds=bounds
            )
            point.bucket_counts.extend(counts)
            point.attributes.extend(attributes)


def _rpc(status: str) -> list[KeyValue]:
    return [
        *_attrs(rpc_service="studyassist.storage.v1.StorageService"),
        KeyValue(key="rpc.method", value=AnyValue(string_value="GetFile")),
        KeyValue(key="rpc.grpc.status", value=AnyValue(string_value=status)),
    ]


def synthetic(
    *, ok: int, failed: int, latency_ms: float, pool_used: float, pool_max: float = 20, failed_status: str = "INTERNAL"
) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """One service's export: ``ok`` + ``failed`` calls all lasting ``latency_ms``, and its pool figures."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(_attrs(service_name="storage"))
    scope = resource_metrics.scope_metrics.add()
    duration = scope.metrics.add(name="rpc.server.duration", unit="ms")
    _add_duration_points(duration, [(_rpc("OK"), ok), (_rpc(failed_status), failed)], latency_ms)
    pool = [KeyValue(key="db.client.connection.pool.name", value=AnyValue(string_value="main"))]
    used = scope.metrics.add(name="db.client.connection.count")
    used.gauge.data_points.add(as_double=pool_used).attributes.extend(
        [*pool, KeyValue(key="db.client.connection.state", value=AnyValue(string_value="used"))]
    )
    idle = scope.metrics.add(name="db.client.connection.count")
    idle.gauge.data_points.add(as_double=pool_max - pool_used).attributes.extend(
        [*pool, KeyValue(key="db.client.connection.state", value=AnyValue(string_value="idle"))]
    )
    maximum = scope.metrics.add(name="db.client.connection.max")
    maximum.gauge.data_points.add(as_int=int(pool_max)).attributes.extend(pool)
    return request


def alert_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    # Only the alert logger: other libraries (OpenTelemetry's global-provider warnings) may log too.
    return [r for r in caplog.records if r.name == "metrics.alerts"]


async def test_rules_fire_above_thresholds_and_clear(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="metrics.alerts")
    now = [1_000_000.0]
    async with (
        metrics_service(ENV, clock=lambda: now[0]) as app,
        create_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        receiver = metrics_service_pb2_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        dashboards = metrics_pb2_grpc.MetricsServiceStub(channel)

        async def phase(**figures: float) -> tuple[dict[str, metrics_pb2.Alert], metrics_pb2.Dashboard]:
            now[0] += ALERT_WINDOW_S + 2  # the previous phase's data is out of the alert window
            await receiver.Export(synthetic(**figures))  # type: ignore[arg-type]
            app.alerts.evaluate()
            alerts = (await dashboards.ListAlerts(metrics_pb2.ListAlertsRequest())).alerts
            window = metrics_pb2.GetDashboardRequest(window_seconds=ALERT_WINDOW_S)
            return {a.name: a for a in alerts}, await dashboards.GetDashboard(window)

        # Exactly at every threshold (5 %, 0.5 s, 85 %): nothing fires.
        alerts, dashboard = await phase(ok=95, failed=5, latency_ms=500, pool_used=17)
        assert {name: a.state for name, a in alerts.items()} == {
            "pool_utilisation": metrics_pb2.ALERT_STATE_OK,
            "response_time_p95": metrics_pb2.ALERT_STATE_OK,
            "error_rate": metrics_pb2.ALERT_STATE_OK,
        }
        assert alerts["error_rate"].value == 0.05 and alerts["error_rate"].threshold == 0.05
        assert alerts["response_time_p95"].value == 0.5
        assert alerts["pool_utilisation"].value == 0.85
        (recommendation,) = dashboard.pool_recommendations
        assert recommendation.action == metrics_pb2.POOL_ACTION_MAINTAIN
        assert (recommendation.current_max, recommendation.recommended_max) == (20, 20)

        # Just above: all three fire, since now.
        alerts, dashboard = await phase(ok=94, failed=6, latency_ms=501, pool_used=18)
        assert all(a.state == metrics_pb2.ALERT_STATE_FIRING for a in alerts.values())
        assert all(a.since.ToNanoseconds() == int(now[0] * 1e9) for a in alerts.values())
        assert sorted(r.getMessage() for r in alert_records(caplog)) == [
            "alert error_rate firing",
            "alert pool_utilisation firing",
            "alert response_time_p95 firing",
        ]
        fired_at = now[0]
        assert alerts["response_time_p95"].value == 0.501
        assert "storage GetFile" in alerts["response_time_p95"].description
        (recommendation,) = dashboard.pool_recommendations
        assert recommendation.action == metrics_pb2.POOL_ACTION_INCREASE
        assert recommendation.recommended_max == 26  # peak 18 in use at 70 %
        assert recommendation.peak_utilisation == 0.9

        # Still above: still firing, since unchanged.
        alerts, _ = await phase(ok=50, failed=50, latency_ms=800, pool_used=19)
        assert all(a.state == metrics_pb2.ALERT_STATE_FIRING for a in alerts.values())
        assert len(alert_records(caplog)) == 3  # no change, nothing logged
        assert all(a.since.ToNanoseconds() == int(fired_at * 1e9) for a in alerts.values())

        # Back to normal: all clear, and the idle pool may shrink.
        alerts, dashboard = await phase(ok=100, failed=0, latency_ms=50, pool_used=2)
        assert all(a.state == metrics_pb2.ALERT_STATE_OK for a in alerts.values())
        assert all(a.since.ToNanoseconds() == int(now[0] * 1e9) for a in alerts.values())
        assert sum("cleared" in r.getMessage() for r in alert_records(caplog)) == 3
        (recommendation,) = dashboard.pool_recommendations
        assert recommendation.action == metrics_pb2.POOL_ACTION_DECREASE
        assert recommendation.recommended_max == 3

        # Too few calls to judge an error rate (ALERT_MIN_REQUESTS, default 20): no error alert.
        alerts, _ = await phase(ok=5, failed=5, latency_ms=50, pool_used=2)
        assert alerts["error_rate"].state == metrics_pb2.ALERT_STATE_OK


async def test_background_evaluation_fires_without_being_asked() -> None:
    env = {**ENV, "ALERT_EVAL_INTERVAL_S": "0.05"}
    async with metrics_service(env) as app, create_channel(f"127.0.0.1:{app.port}") as channel:
        await metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(  # type: ignore[no-untyped-call]
            synthetic(ok=10, failed=90, latency_ms=50, pool_used=1)
        )
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        for _ in range(200):
            alerts = {a.name: a for a in (await stub.ListAlerts(metrics_pb2.ListAlertsRequest())).alerts}
            if alerts["error_rate"].state == metrics_pb2.ALERT_STATE_FIRING:
                break
            await asyncio.sleep(0.05)
        assert alerts["error_rate"].state == metrics_pb2.ALERT_STATE_FIRING
        assert alerts["error_rate"].value == 0.9
        assert alerts["pool_utilisation"].state == metrics_pb2.ALERT_STATE_OK


def calls(service: str, outcomes: dict[str, int]) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """One service's calls, 10 ms each: keys are gRPC status names, or HTTP status codes as digits."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.extend(_attrs(service_name=service))
    scope = resource_metrics.scope_metrics.add()
    grpc_calls = [(_rpc(status), n) for status, n in outcomes.items() if not status.isdigit()]
    http_calls = [
        (
            [
                KeyValue(key="http.route", value=AnyValue(string_value="/v1/files/{file_id}")),
                KeyValue(key="http.request.method", value=AnyValue(string_value="GET")),
                KeyValue(key="http.response.status_code", value=AnyValue(int_value=int(status))),
            ],
            n,
        )
        for status, n in outcomes.items()
        if status.isdigit()
    ]
    if grpc_calls:
        _add_duration_points(scope.metrics.add(name="rpc.server.duration", unit="ms"), grpc_calls, 10.0)
    if http_calls:
        _add_duration_points(scope.metrics.add(name="http.server.request.duration", unit="ms"), http_calls, 10.0)
    return request


# Only server faults count as errors: a student pressing Stop (CANCELLED), a missing file, bad input
# or a rate limit says nothing about the service's health.
NOT_ERRORS = ["CANCELLED", "NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "404", "400", "429"]
ERRORS = ["INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED"]
ERRORS += ["RESOURCE_EXHAUSTED", "500", "503"]


@pytest.mark.parametrize(("outcome", "is_error"), [(o, False) for o in NOT_ERRORS] + [(o, True) for o in ERRORS])
async def test_error_rate_counts_only_server_faults(outcome: str, is_error: bool) -> None:
    now = [2_000_000.0]
    async with (
        metrics_service(ENV, clock=lambda: now[0]) as app,
        create_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        receiver = metrics_service_pb2_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        ok = "200" if outcome.isdigit() else "OK"
        await receiver.Export(calls("gateway" if outcome.isdigit() else "storage", {ok: 50, outcome: 50}))
        app.alerts.evaluate()
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        alerts = {a.name: a for a in (await stub.ListAlerts(metrics_pb2.ListAlertsRequest())).alerts}
        dashboard = await stub.GetDashboard(metrics_pb2.GetDashboardRequest(window_seconds=ALERT_WINDOW_S))
    (stats,) = dashboard.endpoints
    assert (stats.count, stats.errors) == (100, 50 if is_error else 0)
    assert stats.error_rate == (0.5 if is_error else 0.0)
    expected = metrics_pb2.ALERT_STATE_FIRING if is_error else metrics_pb2.ALERT_STATE_OK
    assert alerts["error_rate"].state == expected, alerts["error_rate"]


async def test_error_rate_reads_numeric_grpc_status_codes() -> None:
    """The OTel grpc instrumentation records rpc.grpc.status_code as a number: 13 is INTERNAL, 1 CANCELLED."""
    request = calls("chat", {})
    scope = request.resource_metrics[0].scope_metrics[0]
    numeric = [
        ([*_attrs(rpc_service="studyassist.chat.v1.ChatService", rpc_method="Chat"), _code(code)], n)
        for code, n in ((0, 70), (1, 20), (13, 10))
    ]
    _add_duration_points(scope.metrics.add(name="rpc.server.duration", unit="ms"), numeric, 10.0)
    async with metrics_service(ENV) as app, create_channel(f"127.0.0.1:{app.port}") as channel:
        await metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(request)  # type: ignore[no-untyped-call]
        dashboard = await metrics_pb2_grpc.MetricsServiceStub(channel).GetDashboard(
            metrics_pb2.GetDashboardRequest(window_seconds=ALERT_WINDOW_S)
        )
    (stats,) = dashboard.endpoints
    assert (stats.method, stats.count, stats.errors) == ("Chat", 100, 10)


def _code(code: int) -> KeyValue:
    return KeyValue(key="rpc.grpc.status_code", value=AnyValue(int_value=code))
