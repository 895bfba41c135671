"""What the window means: per-endpoint latency and errors, gauges, cache hit ratios, pool use.

Names read here (the conventions every service's instruments follow):
- ``rpc.server.duration`` (the core server interceptor; attributes rpc.service, rpc.method,
  rpc.grpc.status as a name, or rpc.grpc.status_code as a number), ``http.server.duration`` /
  ``http.server.request.duration`` (http.route, http.request.method, http.response.status_code).
- Errors are server faults only (``studyassist.core.errors.SERVER_FAULTS``; HTTP 5xx): a student pressing Stop
  (CANCELLED), a missing file (NOT_FOUND), bad input or a rate limit (HTTP 4xx) is not an error.
- Pools: storage's ``db.pool.in_use`` / ``db.pool.max`` / ``db.pool.waiting`` (``db.pool.size``,
  connections open, and ``db.pool.idle`` are shown as gauges but not needed here), or the OTel
  semantic conventions ``db.client.connection.count`` (attribute db.client.connection.state =
  used|idle), ``db.client.connection.max``, ``db.client.connection.pending_requests`` (the older
  ``db.client.connections.*`` names with ``state`` also work). The pool name comes from
  db.client.connection.pool.name, pool.name or pool ("default" without one).
- Cache hit ratios: counters ``<x>.hits`` and ``<x>.misses`` with the same attributes, or one
  counter with attribute ``result`` (or cache.result) = hit|miss, become ``<x>.hit_ratio``
  (``embedding.cache.hit_ratio``, ``chat.cache.hit_ratio``, per ``layer``).
- Every other histogram becomes a ``HistogramStats`` (p50/p95/p99, mean, rate, in its own unit):
  chat's ``llm.time_to_first_token`` (s) and ``llm.tokens_per_second``, storage's
  ``db.client.operation.duration`` (s), ``embedding.batch.size``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import grpc
from studyassist.core.errors import SERVER_FAULTS
from studyassist.metrics.v1 import metrics_pb2

from metrics.store import Histogram, MetricStore, Series, WindowView

RPC_DURATION = "rpc.server.duration"
HTTP_DURATIONS = ("http.server.duration", "http.server.request.duration")
UNIT_TO_MS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "ns": 1e-6}

# Server faults by name (the duration series carry rpc.grpc.status as a name).
SERVER_FAULT_NAMES = frozenset(code.name for code in SERVER_FAULTS)
GRPC_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

POOL_USED = {"db.client.connection.count", "db.client.connections.usage", "db.pool.in_use"}
POOL_MAX = {"db.client.connection.max", "db.client.connections.max", "db.pool.max"}
POOL_WAITING = {
    "db.client.connection.pending_requests",
    "db.client.connections.pending_requests",
    "db.pool.waiting",
}
POOL_NAME_KEYS = ("db.client.connection.pool.name", "pool.name", "pool")
STATE_KEYS = ("db.client.connection.state", "state")
# Pool sizing: aim for this utilisation at the window's peak; shrink only below the low mark.
TARGET_UTILISATION = 0.7
LOW_UTILISATION = 0.3
MIN_POOL_SIZE = 2


@dataclass(slots=True)
class Endpoint:
    service: str
    rpc_service: str
    method: str
    histogram: Histogram = field(default_factory=Histogram)
    errors: int = 0
    scale_to_ms: float = 1.0

    @property
    def count(self) -> int:
        return self.histogram.count

    def percentile_ms(self, q: float) -> float:
        return self.histogram.quantile(q) * self.scale_to_ms

    def stats(self, window_s: float) -> metrics_pb2.EndpointStats:
        count = self.count
        return metrics_pb2.EndpointStats(
            service=self.service,
            method=self.method,
            rpc_service=self.rpc_service,
            count=count,
            errors=self.errors,
            p50_ms=self.percentile_ms(0.50),
            p95_ms=self.percentile_ms(0.95),
            p99_ms=self.percentile_ms(0.99),
            mean_ms=self.histogram.total / count * self.scale_to_ms if count else 0.0,
            per_second=count / window_s if window_s else 0.0,
            error_rate=self.errors / count if count else 0.0,
        )


def grpc_status_name(series: Series) -> str:
    """The call's status name (``OK``, ``CANCELLED``...), from rpc.grpc.status or the numeric
    rpc.grpc.status_code the OTel grpc instrumentation records; "" when neither is there."""
    name = series.attribute("rpc.grpc.status")
    if name:
        return name.upper()
    code = series.attribute("rpc.grpc.status_code")
    return GRPC_CODE_NAMES.get(int(code), "UNKNOWN") if code.isdigit() else ""


def is_server_fault(series: Series) -> bool:
    """Whether a duration series counts as failed calls: a gRPC status in ``SERVER_FAULTS`` or HTTP 5xx."""
    if series.name == RPC_DURATION:
        return grpc_status_name(series) in SERVER_FAULT_NAMES
    code = series.attribute("http.response.status_code", "http.status_code")
    return code.isdigit() and 500 <= int(code) <= 599


def _endpoint_key(series: Series) -> tuple[str, str, str, bool] | None:
    """(service, rpc service, method, is error) for a duration histogram, None for anything else."""
    if series.name == RPC_DURATION:
        return series.service, series.attribute("rpc.service"), series.attribute("rpc.method"), is_server_fault(series)
    if series.name in HTTP_DURATIONS:
        verb = series.attribute("http.request.method", "http.method")
        route = series.attribute("http.route", "http.target") or "/"
        return series.service, "http", f"{verb} {route}".strip(), is_server_fault(series)
    return None


def endpoints(views: list[WindowView]) -> list[Endpoint]:
    merged: dict[tuple[str, str, str], Endpoint] = {}
    for view in views:
        key = _endpoint_key(view.series)
        if key is None or view.histogram.count == 0:
            continue
        service, rpc_service, method, is_error = key
        endpoint = merged.get((service, rpc_service, method))
        if endpoint is None:
            endpoint = Endpoint(service, rpc_service, method, scale_to_ms=UNIT_TO_MS.get(view.series.unit, 1.0))
            merged[(service, rpc_service, method)] = endpoint
        endpoint.histogram.merge(view.histogram)
        if is_error:
            endpoint.errors += view.histogram.count
    return sorted(merged.values(), key=lambda e: (e.service, e.rpc_service, e.method))


def _gauge_values(views: list[WindowView], window_s: float) -> list[metrics_pb2.GaugeValue]:
    values = []
    for view in views:
        series = view.series
        attributes = dict(series.attributes)
        if series.instance:
            attributes["service.instance.id"] = series.instance
        if series.kind in ("gauge", "updowncounter") and view.gauge.n:
            values.append(
                metrics_pb2.GaugeValue(
                    name=series.name,
                    service=series.service,
                    attributes=attributes,
                    value=view.gauge.last,
                    kind=series.kind,
                    unit=series.unit,
                )
            )
        elif series.kind == "counter":
            values.append(
                metrics_pb2.GaugeValue(
                    name=series.name,
                    service=series.service,
                    attributes=attributes,
                    value=view.increase,
                    kind="counter",
                    per_second=view.increase / window_s if window_s else 0.0,
                    unit=series.unit,
                )
            )
    return values


def _hit_ratios(views: list[WindowView]) -> list[metrics_pb2.GaugeValue]:
    # (service, base name, attributes without the result) -> [hits, misses]
    tallies: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for view in views:
        series = view.series
        if series.kind != "counter":
            continue
        result = series.attribute("result", "cache.result")
        if series.name.endswith((".hits", ".misses")):
            base, _, suffix = series.name.rpartition(".")
            tallies[(series.service, base, series.attributes)][0 if suffix == "hits" else 1] += view.increase
        elif result in ("hit", "miss"):
            rest = tuple((k, v) for k, v in series.attributes if k not in ("result", "cache.result"))
            tallies[(series.service, series.name, rest)][0 if result == "hit" else 1] += view.increase
    values = []
    for (service, base, attributes), (hits, misses) in sorted(tallies.items()):
        if hits + misses > 0:
            values.append(
                metrics_pb2.GaugeValue(
                    name=f"{base}.hit_ratio",
                    service=service,
                    attributes=dict(attributes),
                    value=hits / (hits + misses),
                    kind="ratio",
                    unit="1",
                )
            )
    return values


@dataclass(slots=True)
class PoolUse:
    service: str
    pool: str
    in_use_mean: float = 0.0
    in_use_peak: float = 0.0
    max_size: float = 0.0
    waiting_peak: float = 0.0

    @property
    def mean_utilisation(self) -> float:
        return self.in_use_mean / self.max_size if self.max_size else 0.0

    @property
    def peak_utilisation(self) -> float:
        return self.in_use_peak / self.max_size if self.max_size else 0.0


def pools(views: list[WindowView]) -> list[PoolUse]:
    found: dict[tuple[str, str, str], PoolUse] = {}
    for view in views:
        series = view.series
        if not view.gauge.n or series.name not in POOL_USED | POOL_MAX | POOL_WAITING:
            continue
        pool_name = series.attribute(*POOL_NAME_KEYS) or "default"
        key = (series.service, series.instance, pool_name)
        use = found.get(key)
        if use is None:
            use = found[key] = PoolUse(series.service, pool_name)
        if series.name in POOL_USED:
            state = series.attribute(*STATE_KEYS)
            if state and state != "used":
                continue
            use.in_use_mean += view.gauge.mean
            use.in_use_peak += view.gauge.high
        elif series.name in POOL_MAX:
            use.max_size = max(use.max_size, view.gauge.last)
        else:
            use.waiting_peak = max(use.waiting_peak, view.gauge.high)
    return [use for _, use in sorted(found.items()) if use.max_size > 0]


def _connections_for(demand: float) -> int:
    """Connections that hold ``demand`` at the target utilisation (21 / 0.7 is 30, not 31: float noise rounded off)."""
    return math.ceil(round(demand / TARGET_UTILISATION, 6))


def recommend(use: PoolUse, high_utilisation: float) -> metrics_pb2.PoolRecommendation:
    current = int(use.max_size)
    demand = use.in_use_peak + use.waiting_peak
    if use.waiting_peak > 0 or use.mean_utilisation > high_utilisation:
        action = metrics_pb2.POOL_ACTION_INCREASE
        recommended = max(current + 1, _connections_for(demand))
        reason = (
            f"mean utilisation {use.mean_utilisation:.0%} (alert above {high_utilisation:.0%}), "
            f"peak {use.in_use_peak:g} in use and {use.waiting_peak:g} waiting of {current}: "
            f"size for {TARGET_UTILISATION:.0%} at peak"
        )
    elif use.peak_utilisation < LOW_UTILISATION and current > MIN_POOL_SIZE:
        action = metrics_pb2.POOL_ACTION_DECREASE
        recommended = max(MIN_POOL_SIZE, _connections_for(use.in_use_peak))
        recommended = min(recommended, current - 1)
        reason = (
            f"peak utilisation {use.peak_utilisation:.0%} is under {LOW_UTILISATION:.0%}: "
            f"{recommended} connections hold the peak of {use.in_use_peak:g} at {TARGET_UTILISATION:.0%} or less"
        )
    else:
        action = metrics_pb2.POOL_ACTION_MAINTAIN
        recommended = current
        reason = f"mean utilisation {use.mean_utilisation:.0%}, peak {use.peak_utilisation:.0%}, nobody waiting"
    return metrics_pb2.PoolRecommendation(
        service=use.service,
        pool=use.pool,
        action=action,
        current_max=current,
        recommended_max=recommended,
        mean_in_use=use.in_use_mean,
        peak_in_use=use.in_use_peak,
        mean_utilisation=use.mean_utilisation,
        peak_utilisation=use.peak_utilisation,
        peak_waiting=use.waiting_peak,
        reason=reason,
    )


def other_histograms(views: list[WindowView]) -> list[tuple[Series, Histogram]]:
    """Histograms that are not request durations, merged over instances (first series names them)."""
    merged: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[Series, Histogram]] = {}
    for view in views:
        series = view.series
        if series.kind != "histogram" or view.histogram.count == 0 or _endpoint_key(series) is not None:
            continue
        key = (series.service, series.name, series.attributes)
        if key not in merged:
            merged[key] = (series, Histogram())
        merged[key][1].merge(view.histogram)
    return [merged[key] for key in sorted(merged)]


def _histogram_stats(views: list[WindowView], window_s: float) -> list[metrics_pb2.HistogramStats]:
    return [
        metrics_pb2.HistogramStats(
            name=series.name,
            service=series.service,
            attributes=dict(series.attributes),
            unit=series.unit,
            count=histogram.count,
            p50=histogram.quantile(0.50),
            p95=histogram.quantile(0.95),
            p99=histogram.quantile(0.99),
            mean=histogram.total / histogram.count,
            per_second=histogram.count / window_s if window_s else 0.0,
        )
        for series, histogram in other_histograms(views)
    ]


def timeline(store: MetricStore, window_s: float) -> list[metrics_pb2.TimelinePoint]:
    """Calls and failed calls per time slot of the window, every slot included (a quiet one as 0):
    the dashboard draws the window it opens on from what is already held, not from its own polls."""
    slots = store.slot_indices(window_s)
    counts = [0] * len(slots)
    errors = [0] * len(slots)
    for series in store.all_series():
        key = _endpoint_key(series)
        if key is None:
            continue
        for slot in series.slots:
            if slot.histogram is None or not slots.start <= slot.index < slots.stop:
                continue
            counts[slot.index - slots.start] += slot.histogram.count
            if key[3]:
                errors[slot.index - slots.start] += slot.histogram.count
    points = []
    for i, index in enumerate(slots):
        point = metrics_pb2.TimelinePoint(
            seconds=store.slot_s, count=counts[i], errors=errors[i], per_second=counts[i] / store.slot_s
        )
        point.start.FromNanoseconds(int(index * store.slot_s * 1e9))
        points.append(point)
    return points


def dashboard(store: MetricStore, window_s: int, high_utilisation: float) -> metrics_pb2.Dashboard:
    views = store.window(window_s)
    spans, error_spans, traces = store.traces(window_s)
    return metrics_pb2.Dashboard(
        window_seconds=window_s,
        endpoints=[e.stats(window_s) for e in endpoints(views)],
        gauges=[*_gauge_values(views, window_s), *_hit_ratios(views)],
        spans_received=spans,
        traces_seen=traces,
        error_spans=error_spans,
        pool_recommendations=[recommend(use, high_utilisation) for use in pools(views)],
        series_dropped=store.series_dropped,
        points_dropped=store.points_dropped,
        series_count=store.series_count,
        histograms=_histogram_stats(views, window_s),
        timeline=timeline(store, window_s),
    )
