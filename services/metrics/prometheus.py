"""Prometheus exposition of the received data at ``/metrics`` (prometheus-client, its own thread).

The scrape runs on prometheus-client's HTTP thread; it asks the event loop for a snapshot so the
store is only ever touched from the loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from metrics.alerts import FIRING, AlertEvaluator
from metrics.analysis import endpoints, grpc_status_name, other_histograms, pools
from metrics.store import Histogram, MetricStore, Series

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
SCRAPE_TIMEOUT_S = 10.0
# A gauge not reported for this long is left out of the scrape, so Prometheus marks it stale: the
# last queue depth of a pod that crashed must not hold the embedding HPA up for the whole window.
# Services report every 10 s (OTEL_METRIC_EXPORT_INTERVAL); this allows for many missed exports.
GAUGE_FRESH_S = 120.0
QUANTILES = (0.5, 0.95, 0.99)


def prometheus_name(name: str) -> str:
    cleaned = _INVALID.sub("_", name)
    return cleaned if not cleaned[:1].isdigit() else f"_{cleaned}"


def _families(store: MetricStore, alerts: AlertEvaluator, window_s: int) -> list[Metric]:
    """Built on the loop thread: the store's content as Prometheus metric families."""
    families: list[Metric] = []
    views = store.window(window_s)
    labels = ["service", "rpc_service", "method"]
    quantile = GaugeMetricFamily(
        "studyassist_request_duration_quantile_milliseconds",
        f"Server duration percentiles over the last {window_s} s",
        labels=[*labels, "quantile"],
    )
    error_ratio = GaugeMetricFamily(
        "studyassist_request_error_ratio",
        f"Calls the server failed (gRPC INTERNAL, UNAVAILABLE, ...; HTTP 5xx) / all calls over the last {window_s} s",
        labels=labels,
    )
    for endpoint in endpoints(views):
        values = [endpoint.service, endpoint.rpc_service, endpoint.method]
        for q in QUANTILES:
            quantile.add_metric([*values, str(q)], endpoint.percentile_ms(q))
        error_ratio.add_metric(values, endpoint.errors / endpoint.count if endpoint.count else 0.0)
    families += [quantile, error_ratio]

    # Totals since the metrics service started, per series: Prometheus computes rates from them.
    duration = SummaryMetricFamily(
        "studyassist_request_duration_milliseconds",
        "Server duration of calls received since the metrics service started",
        labels=[*labels, "status"],
    )
    by_name: dict[str, list[tuple[dict[str, str], float, str]]] = {}
    for series in store.all_series():
        if series.name == "rpc.server.duration":
            duration.add_metric(
                [
                    series.service,
                    series.attribute("rpc.service"),
                    series.attribute("rpc.method"),
                    grpc_status_name(series),
                ],
                series.lifetime_count,
                series.lifetime_sum,
            )
            continue
        if series.kind == "histogram":
            continue
        label_values = {prometheus_name(k): v for k, v in series.attributes}
        label_values["service"] = series.service
        if series.instance:
            label_values["instance_id"] = series.instance
        if series.kind == "counter":
            by_name.setdefault(series.name, []).append((label_values, series.lifetime_sum, "counter"))
        elif series.slots and series.slots[-1].gauge is not None and store.reported_within(series, GAUGE_FRESH_S):
            by_name.setdefault(series.name, []).append((label_values, series.slots[-1].gauge.last, "gauge"))
    families.append(duration)
    for name, histogram_rows in _group_by_name(other_histograms(views)).items():
        label_maps = [
            ({prometheus_name(k): v for k, v in series.attributes} | {"service": series.service}, histogram)
            for series, histogram in histogram_rows
        ]
        names = sorted({key for label_map, _ in label_maps for key in label_map} - {"quantile"})
        quantiles = GaugeMetricFamily(
            f"{prometheus_name(name)}_window_quantile",
            f"{name} percentiles over the last {window_s} s",
            labels=[*names, "quantile"],
        )
        for label_map, histogram in label_maps:
            for q in QUANTILES:
                quantiles.add_metric([label_map.get(n, "") for n in names] + [str(q)], histogram.quantile(q))
        families.append(quantiles)
    for name, rows in sorted(by_name.items()):
        names = sorted({key for label_values, _, _ in rows for key in label_values})
        family: GaugeMetricFamily | CounterMetricFamily
        if rows[0][2] == "counter":
            family = CounterMetricFamily(prometheus_name(name), f"{name} (OTLP counter)", labels=names)
        else:
            family = GaugeMetricFamily(prometheus_name(name), f"{name} (OTLP gauge, last value)", labels=names)
        for label_values, value, kind in rows:
            if kind == rows[0][2]:
                family.add_metric([label_values.get(n, "") for n in names], value)
        families.append(family)

    firing = GaugeMetricFamily("studyassist_alert_firing", "1 while the alert fires", labels=["alert"])
    alert_value = GaugeMetricFamily("studyassist_alert_value", "The value the alert rule last saw", labels=["alert"])
    for alert in alerts.alerts.values():
        firing.add_metric([alert.name], 1.0 if alert.state == FIRING else 0.0)
        alert_value.add_metric([alert.name], alert.value)
    recommended = GaugeMetricFamily(
        "studyassist_pool_utilisation", f"Mean pool utilisation over the last {window_s} s", labels=["service", "pool"]
    )
    for use in pools(views):
        recommended.add_metric([use.service, use.pool], use.mean_utilisation)
    families += [firing, alert_value, recommended]
    families.append(GaugeMetricFamily("studyassist_metrics_series", "Series held in memory", value=store.series_count))
    families.append(
        CounterMetricFamily(
            "studyassist_metrics_series_dropped", "New series refused at the series cap", value=store.series_dropped
        )
    )
    families.append(
        CounterMetricFamily(
            "studyassist_metrics_points_dropped", "Data points refused at the series cap", value=store.points_dropped
        )
    )
    families.append(CounterMetricFamily("studyassist_spans_received", "Spans received", value=store.spans_total))
    return families


def _group_by_name(rows: list[tuple[Series, Histogram]]) -> dict[str, list[tuple[Series, Histogram]]]:
    grouped: dict[str, list[tuple[Series, Histogram]]] = {}
    for series, histogram in rows:
        grouped.setdefault(series.name, []).append((series, histogram))
    return grouped


class StoreCollector(Collector):
    def __init__(self, loop: asyncio.AbstractEventLoop, snapshot: Callable[[], list[Metric]]) -> None:
        self._loop = loop
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        async def take() -> list[Metric]:
            return self._snapshot()

        future = asyncio.run_coroutine_threadsafe(take(), self._loop)
        families: Iterator[Metric] = iter(future.result(timeout=SCRAPE_TIMEOUT_S))
        return families


def start_exposition(
    host: str, port: int, store: MetricStore, alerts: AlertEvaluator, window_s: int
) -> tuple[WSGIServer, int]:
    """Serve /metrics on ``host:port`` (0 picks a free port); returns the server and its port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(asyncio.get_running_loop(), lambda: _families(store, alerts, window_s)))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port} for /metrics: {exc}") from None
    return server, int(server.server_port)
