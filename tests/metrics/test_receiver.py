"""A real OTel SDK exporting to the metrics service: percentiles, errors, gauges, traces, /metrics."""

from __future__ import annotations

import itertools
import math
import random

import grpc
import httpx
import numpy as np
import pytest
from metrics.store import MetricStore
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as otlp
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from studyassist.core.channels import create_channel
from studyassist.core.telemetry import DURATION_BUCKETS_MS, duration_views, setup_telemetry
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

from tests.metrics.helpers import build_probe, flush, metrics_service


def bucket_of(value: float) -> tuple[float, float]:
    edges = (0.0, *DURATION_BUCKETS_MS, math.inf)
    for low, high in itertools.pairwise(edges):
        if low < value <= high:
            return low, high
    return 0.0, edges[1]


def assert_percentiles_match(stats: metrics_pb2.EndpointStats, values: list[float]) -> None:
    """Each reported percentile lies in the bucket(s) holding the true one (the data's resolution)."""
    for q, reported in ((50, stats.p50_ms), (95, stats.p95_ms), (99, stats.p99_ms)):
        low, _ = bucket_of(float(np.percentile(values, q, method="lower")))
        _, high = bucket_of(float(np.percentile(values, q, method="higher")))
        assert low <= reported <= high, (q, reported, low, high)


def endpoint(dashboard: metrics_pb2.Dashboard, service: str, method: str) -> metrics_pb2.EndpointStats:
    found = [e for e in dashboard.endpoints if e.service == service and e.method == method]
    assert len(found) == 1, [(e.service, e.method) for e in dashboard.endpoints]
    return found[0]


async def test_sdk_export_gives_dashboard_percentiles_errors_gauges_traces_and_scrape() -> None:
    rng = random.Random(7)
    async with metrics_service() as app, create_channel(f"127.0.0.1:{app.port}") as channel:
        telemetry = setup_telemetry("probe", f"127.0.0.1:{app.port}", export_interval_s=3600)
        try:
            probe, probe_port = build_probe(telemetry)
            await probe.start()
            try:
                async with create_channel(f"127.0.0.1:{probe_port}") as probe_channel:
                    stub = embedding_pb2_grpc.EmbeddingServiceStub(probe_channel)
                    for i in range(20):
                        await stub.Embed(embedding_pb2.EmbedRequest(texts=[f"t{i}".encode()]))
                    for text in [b"bad", b"broken"] * 5:  # only the server faults count as errors
                        with pytest.raises(grpc.aio.AioRpcError):
                            await stub.Embed(embedding_pb2.EmbedRequest(texts=[text]))
            finally:
                await probe.stop(grace=0.5)

            # Known durations on the interceptor's instrument, in two exports: the second is cumulative
            # and must be turned into a delta, not counted twice.
            duration = telemetry.meter.create_histogram("rpc.server.duration", unit="ms")
            attributes = {"rpc.service": "test.Synthetic", "rpc.method": "Synthetic", "rpc.grpc.status": "OK"}
            first = [rng.lognormvariate(3.0, 1.0) for _ in range(600)]
            for value in first:
                duration.record(value, attributes)
            batch_sizes = [1, 2, 4, 8, 16, 32] * 10
            batch_size = telemetry.meter.create_histogram("embedding.batch.size", unit="{text}")
            for size in batch_sizes:
                batch_size.record(size, {"model": "minilm"})
            await flush(telemetry)
            second = [rng.uniform(200, 900) for _ in range(400)]
            for value in second:
                duration.record(value, attributes)
            await flush(telemetry)

            dashboard = await metrics_pb2_grpc.MetricsServiceStub(channel).GetDashboard(
                metrics_pb2.GetDashboardRequest(window_seconds=120)
            )
            synthetic = endpoint(dashboard, "probe", "Synthetic")
            assert synthetic.count == 1000
            assert synthetic.errors == 0
            assert_percentiles_match(synthetic, first + second)
            assert synthetic.mean_ms == pytest.approx(np.mean(first + second), rel=1e-6)

            embed = endpoint(dashboard, "probe", "Embed")
            assert embed.rpc_service == "studyassist.embedding.v1.EmbeddingService"
            assert (embed.count, embed.errors) == (30, 5)
            assert embed.error_rate == pytest.approx(5 / 30)
            assert embed.per_second == pytest.approx(30 / 120)

            (batches,) = [h for h in dashboard.histograms if h.name == "embedding.batch.size"]
            assert (batches.service, dict(batches.attributes), batches.unit) == ("probe", {"model": "minilm"}, "{text}")
            assert batches.count == 60 and batches.mean == pytest.approx(np.mean(batch_sizes))
            assert 0 < batches.p50 <= 10 and 25 < batches.p99 <= 32  # SDK default buckets (5, 10, 25, 50]; max 32
            assert all(h.name != "rpc.server.duration" for h in dashboard.histograms)

            rss = [g for g in dashboard.gauges if g.name == "process.memory.rss" and g.service == "probe"]
            assert rss and rss[0].value > 10_000_000 and rss[0].kind == "gauge"
            assert dashboard.spans_received >= 25
            assert dashboard.traces_seen >= 25

            async with httpx.AsyncClient() as http:
                scrape = (await http.get(f"http://127.0.0.1:{app.http_port}/metrics")).text
            assert (
                'studyassist_request_duration_quantile_milliseconds{method="Synthetic",quantile="0.95",'
                'rpc_service="test.Synthetic",service="probe"}' in scrape
            )
            assert 'studyassist_request_duration_milliseconds_count{method="Embed"' in scrape
            assert "process_memory_rss{" in scrape
            assert 'embedding_batch_size_window_quantile{model="minilm",quantile="0.5",service="probe"}' in scrape
            assert 'studyassist_alert_firing{alert="error_rate"}' in scrape
        finally:
            telemetry.shutdown()


async def test_delta_temporality_and_cache_hit_ratio() -> None:
    async with metrics_service() as app, create_channel(f"127.0.0.1:{app.port}") as channel:
        exporter = OTLPMetricExporter(
            endpoint=f"127.0.0.1:{app.port}",
            insecure=True,
            timeout=5,
            preferred_temporality={Histogram: AggregationTemporality.DELTA, Counter: AggregationTemporality.DELTA},
        )
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        provider = MeterProvider(
            resource=Resource.create({"service.name": "deltas"}), metric_readers=[reader], views=duration_views()
        )
        try:
            meter = provider.get_meter("test")
            duration = meter.create_histogram("rpc.server.duration", unit="s")
            hits, misses = meter.create_counter("cache.hits"), meter.create_counter("cache.misses")
            attributes = {"rpc.service": "test.Delta", "rpc.method": "Delta", "rpc.grpc.status": "OK"}
            values = []
            for batch in range(3):
                for i in range(100):
                    seconds = 0.001 * (1 + i + 40 * batch)
                    values.append(seconds * 1000)
                    duration.record(seconds, attributes)
                hits.add(3, {"cache": "answers"})
                misses.add(1, {"cache": "answers"})
                await _to_thread_flush(provider)
            dashboard = await metrics_pb2_grpc.MetricsServiceStub(channel).GetDashboard(
                metrics_pb2.GetDashboardRequest(window_seconds=60)
            )
        finally:
            await _to_thread_shutdown(provider)
    delta = endpoint(dashboard, "deltas", "Delta")
    assert delta.count == 300
    assert_percentiles_match(delta, values)  # recorded in seconds, shown in milliseconds
    ratios = [g for g in dashboard.gauges if g.name == "cache.hit_ratio"]
    assert [(g.value, dict(g.attributes)) for g in ratios] == [(0.75, {"cache": "answers"})]
    hit_counter = [g for g in dashboard.gauges if g.name == "cache.hits"]
    assert hit_counter[0].value == 9 and hit_counter[0].kind == "counter"


async def _to_thread_flush(provider: MeterProvider) -> None:
    import asyncio

    assert await asyncio.to_thread(provider.force_flush, 10_000)


async def _to_thread_shutdown(provider: MeterProvider) -> None:
    import asyncio

    await asyncio.to_thread(provider.shutdown)


def gauge_request(service: str, names: list[str]) -> metrics_service_pb2.ExportMetricsServiceRequest:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    scope = resource_metrics.scope_metrics.add()
    for name in names:
        metric = scope.metrics.add(name=name)
        metric.gauge.data_points.append(otlp.NumberDataPoint(as_double=1.0))
    return request


async def test_series_cap_drops_and_counts_new_series_but_keeps_existing_ones() -> None:
    async with metrics_service({"METRICS_MAX_SERIES": "5"}) as app, create_channel(f"127.0.0.1:{app.port}") as channel:
        receiver = metrics_service_pb2_grpc.MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = await receiver.Export(gauge_request("noisy", [f"g{i}" for i in range(8)]))
        assert reply.partial_success.rejected_data_points == 3
        again = await receiver.Export(gauge_request("noisy", [f"g{i}" for i in range(5)]))
        assert again.partial_success.rejected_data_points == 0
        more = await receiver.Export(gauge_request("other", ["x", "y"]))
        assert more.partial_success.rejected_data_points == 2
        dashboard = await metrics_pb2_grpc.MetricsServiceStub(channel).GetDashboard(metrics_pb2.GetDashboardRequest())
        assert dashboard.series_count == 5
        assert dashboard.series_dropped == 5
        assert dashboard.points_dropped == 5
        assert sorted(g.name for g in dashboard.gauges) == [f"g{i}" for i in range(5)]
        assert dashboard.window_seconds == 300


async def test_dashboard_window_is_validated() -> None:
    async with (
        metrics_service({"METRICS_WINDOW_S": "600"}) as app,
        create_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        for window in (-1, 601):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetDashboard(metrics_pb2.GetDashboardRequest(window_seconds=window))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (await stub.GetDashboard(metrics_pb2.GetDashboardRequest(window_seconds=600))).window_seconds == 600


def test_stale_series_are_evicted_and_free_room_under_the_cap() -> None:
    now = [5_000.0]
    store = MetricStore(window_s=30, max_series=2, clock=lambda: now[0])
    assert store.ingest_metrics(gauge_request("a", ["g1", "g2", "g3"])).rejected_points == 1
    now[0] += 10
    assert store.evict_stale() == 0  # still inside the window
    now[0] += 31
    assert store.evict_stale() == 2
    assert store.ingest_metrics(gauge_request("b", ["h1", "h2"])).rejected_points == 0
    assert sorted(s.name for s in store.all_series()) == ["h1", "h2"]


async def test_exponential_histograms_keep_percentiles_across_rescaling() -> None:
    rng = random.Random(11)
    async with metrics_service() as app, create_channel(f"127.0.0.1:{app.port}") as channel:
        exponential = View(instrument_name="rpc.server.duration", aggregation=ExponentialBucketHistogramAggregation())
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"127.0.0.1:{app.port}", insecure=True, timeout=5),
            export_interval_millis=3_600_000,
        )
        provider = MeterProvider(
            resource=Resource.create({"service.name": "expo"}), metric_readers=[reader], views=[exponential]
        )
        try:
            duration = provider.get_meter("test").create_histogram("rpc.server.duration", unit="ms")
            attributes = {"rpc.service": "test.Expo", "rpc.method": "Expo", "rpc.grpc.status": "OK"}
            # Cumulative export 1: a narrow range (a fine scale); export 2 widens it a thousandfold, so the
            # SDK lowers the scale and the receiver must line the old buckets up with the new ones.
            values = [rng.uniform(10, 12) for _ in range(300)]
            for value in values:
                duration.record(value, attributes)
            await _to_thread_flush(provider)
            wide = [rng.lognormvariate(2.0, 1.5) for _ in range(700)]
            for value in wide:
                duration.record(value, attributes)
            values += wide
            await _to_thread_flush(provider)
            dashboard = await metrics_pb2_grpc.MetricsServiceStub(channel).GetDashboard(
                metrics_pb2.GetDashboardRequest(window_seconds=60)
            )
        finally:
            await _to_thread_shutdown(provider)
    stats = endpoint(dashboard, "expo", "Expo")
    assert stats.count == 1000
    # At most 160 buckets over this range: each about 10 % wide, so 10 % is the resolution.
    for q, reported in ((50, stats.p50_ms), (95, stats.p95_ms), (99, stats.p99_ms)):
        low = float(np.percentile(values, q, method="lower"))
        high = float(np.percentile(values, q, method="higher"))
        assert low / 1.1 <= reported <= high * 1.1, (q, reported, low, high)


async def test_malformed_histograms_are_refused_not_crashing() -> None:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    metric = scope.metrics.add(name="rpc.server.duration", unit="ms")
    metric.exponential_histogram.aggregation_temporality = otlp.AGGREGATION_TEMPORALITY_DELTA
    huge_scale = metric.exponential_histogram.data_points.add(count=1, scale=100)
    huge_scale.positive.bucket_counts.append(1)
    overflow = metric.exponential_histogram.data_points.add(count=1, scale=0)
    overflow.positive.offset = 5000
    overflow.positive.bucket_counts.append(1)
    explicit = scope.metrics.add(name="other.duration", unit="ms")
    explicit.histogram.aggregation_temporality = otlp.AGGREGATION_TEMPORALITY_DELTA
    too_many = explicit.histogram.data_points.add(count=1)
    too_many.explicit_bounds.extend(range(5000))
    too_many.bucket_counts.extend([0] * 5000 + [1])
    async with metrics_service() as app, create_channel(f"127.0.0.1:{app.port}") as channel:
        reply = await metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(request)  # type: ignore[no-untyped-call]
        assert reply.partial_success.rejected_data_points == 3
        assert "buckets or an invalid scale" in reply.partial_success.error_message
        assert app.store.series_count == 0
