"""The names the services' instruments really use reach the dashboard's figures: storage's pool
gauges drive the pool recommendation and alert, chat's LLM histograms and cache counters show as
percentiles and hit ratios. Each producer is the service's own code (or its instrument names)
exporting through the real OTel SDK, so renaming an instrument breaks a test, not the dashboard."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import asyncpg
import pytest
from metrics.analysis import POOL_MAX, POOL_USED, POOL_WAITING
from metrics.server import MetricsApp
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from storage.db import Database
from studyassist.core.channels import create_channel
from studyassist.core.telemetry import Telemetry, setup_telemetry
from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from tests.metrics.helpers import flush, metrics_service

# Storage's informational pool gauges (connections open, idle), which the analysis only shows.
POOL_SHOWN_ONLY = {"db.pool.size", "db.pool.idle"}


class StubPool:
    """asyncpg.Pool's size methods, fixed: 18 of 20 connections in use."""

    def get_size(self) -> int:
        return 20

    def get_idle_size(self) -> int:
        return 2

    def get_max_size(self) -> int:
        return 20

    def get_min_size(self) -> int:
        return 2


@contextmanager
def service_telemetry(name: str, app: MetricsApp) -> Iterator[Telemetry]:
    """The service's own telemetry setup, exporting to the metrics service only when flushed."""
    telemetry = setup_telemetry(name, f"127.0.0.1:{app.port}", export_interval_s=3600)
    try:
        yield telemetry
    finally:
        telemetry.shutdown()


async def dashboard_and_alerts(app: MetricsApp) -> tuple[metrics_pb2.Dashboard, dict[str, metrics_pb2.Alert]]:
    app.alerts.evaluate()
    async with create_channel(f"127.0.0.1:{app.port}") as channel:
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        dashboard = await stub.GetDashboard(metrics_pb2.GetDashboardRequest(window_seconds=60))
        alerts = (await stub.ListAlerts(metrics_pb2.ListAlertsRequest())).alerts
    return dashboard, {a.name: a for a in alerts}


def assert_pool_advice(dashboard: metrics_pb2.Dashboard, alerts: dict[str, metrics_pb2.Alert], waiting: int) -> None:
    (advice,) = dashboard.pool_recommendations
    assert (advice.service, advice.pool) == ("storage", "default")
    assert (advice.current_max, advice.peak_in_use, advice.peak_waiting) == (20, 18, waiting)
    assert advice.mean_utilisation == pytest.approx(0.9)
    assert advice.action == metrics_pb2.POOL_ACTION_INCREASE
    assert advice.recommended_max == -(-(18 + waiting) * 10 // 7)  # peak demand at 70 %, rounded up
    assert alerts["pool_utilisation"].state == metrics_pb2.ALERT_STATE_FIRING
    assert alerts["pool_utilisation"].value == pytest.approx(0.9)
    assert "storage pool default: 18.0 of 20 in use" in alerts["pool_utilisation"].description


async def test_storage_pool_gauge_names_drive_recommendation_and_alert() -> None:
    """OTLP gauges under exactly the names storage exports, as a Collector would forward them."""
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="storage")))
    scope = resource.scope_metrics.add()
    for name, value in {"db.pool.size": 20, "db.pool.idle": 2, "db.pool.in_use": 18}.items():
        scope.metrics.add(name=name).gauge.data_points.add(as_int=value)
    scope.metrics.add(name="db.pool.waiting").gauge.data_points.add(as_int=3)
    scope.metrics.add(name="db.pool.max").gauge.data_points.add(as_int=20)
    async with metrics_service() as app, create_channel(f"127.0.0.1:{app.port}") as channel:
        await metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(request)  # type: ignore[no-untyped-call]
        dashboard, alerts = await dashboard_and_alerts(app)
    assert_pool_advice(dashboard, alerts, waiting=3)
    shown = {g.name: g.value for g in dashboard.gauges if g.service == "storage"}
    assert shown == {
        "db.pool.size": 20,
        "db.pool.idle": 2,
        "db.pool.in_use": 18,
        "db.pool.waiting": 3,
        "db.pool.max": 20,
    }


async def test_storage_register_gauges_feed_the_pool_advice() -> None:
    """Storage's own register_gauges, through the SDK: every pool gauge it exports is one the
    analysis reads (or knowingly only shows), and together they give the advice."""
    async with metrics_service() as app:
        with service_telemetry("storage", app) as telemetry:
            database = Database(cast(asyncpg.Pool, StubPool()), acquire_timeout_s=1.0)
            database.waiting = 3
            database.register_gauges(telemetry.meter)
            await flush(telemetry)
        exported = {s.name for s in app.store.all_series() if s.service == "storage" and s.name.startswith("db.")}
        unread = exported - POOL_USED - POOL_MAX - POOL_WAITING - POOL_SHOWN_ONLY
        assert not unread, f"storage exports pool gauges the metrics analysis does not read: {sorted(unread)}"
        assert exported & POOL_USED and exported & POOL_WAITING, sorted(exported)
        if not exported & POOL_MAX:
            pytest.xfail(f"storage does not export its pool max size yet (expected as db.pool.max): {sorted(exported)}")
        dashboard, alerts = await dashboard_and_alerts(app)
    assert_pool_advice(dashboard, alerts, waiting=3)


async def test_llm_figures_and_chat_cache_hit_ratio_on_the_dashboard() -> None:
    """chat's llm.time_to_first_token (s) and llm.tokens_per_second histograms come out as
    percentiles, its chat.cache.hits / chat.cache.misses counters as a hit ratio per layer."""
    ttft_s = [0.2] * 50 + [0.4] * 45 + [1.5] * 5
    rates = [20.0] * 50 + [40.0] * 50
    async with metrics_service() as app:
        with service_telemetry("chat", app) as telemetry:
            meter = telemetry.meter
            ttft = meter.create_histogram("llm.time_to_first_token", unit="s")
            tokens_per_second = meter.create_histogram("llm.tokens_per_second", unit="{token}/s")
            hits = meter.create_counter("chat.cache.hits", unit="{lookup}")
            misses = meter.create_counter("chat.cache.misses", unit="{lookup}")
            for value in ttft_s:
                ttft.record(value)
            for value in rates:
                tokens_per_second.record(value)
            hits.add(30, {"layer": "local"})
            misses.add(10, {"layer": "local"})
            hits.add(1, {"layer": "redis"})
            misses.add(9, {"layer": "redis"})
            await flush(telemetry)
        dashboard, _ = await dashboard_and_alerts(app)
    figures = {h.name: h for h in dashboard.histograms if h.service == "chat"}
    first_token = figures["llm.time_to_first_token"]
    assert (first_token.unit, first_token.count) == ("s", 100)
    # Resolved by the duration buckets (telemetry.duration_views): 0.2 s is an edge, 0.4 s in (0.3, 0.5].
    assert first_token.p50 == pytest.approx(0.2)
    assert 0.3 < first_token.p95 <= 0.5
    assert first_token.mean == pytest.approx(sum(ttft_s) / 100)
    rate = figures["llm.tokens_per_second"]
    assert (rate.unit, rate.count) == ("{token}/s", 100)
    assert rate.mean == pytest.approx(30.0)
    assert 10 < rate.p50 <= 25 and 25 < rate.p95 <= 40  # the SDK's default buckets (10, 25], (25, 50]
    ratios = {g.attributes["layer"]: g.value for g in dashboard.gauges if g.name == "chat.cache.hit_ratio"}
    assert ratios == {"local": pytest.approx(0.75), "redis": pytest.approx(0.1)}
