"""The recent window of received telemetry, in memory and bounded.

Every series (service, instance, metric name, attributes) keeps a ring of fixed-width time slots
covering ``window_s``; data arriving within one slot is merged into it, so a client that exports
often costs no more memory than one that exports rarely. The number of series is capped: data for
a new series beyond the cap is dropped and counted. Cumulative data (the OTel SDK's default) is
turned into deltas against the last point seen for the same series and start time, so replicas
and restarts do not double-count.

Everything here runs on the event loop thread; nothing is shared with other threads.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Status

SLOTS_PER_WINDOW = 90
# Start times remembered per cumulative series: one per replica or restart still reporting.
MAX_BASELINES = 8
# Distinct trace ids remembered per slot; beyond it traces_seen undercounts (spans are still counted).
MAX_TRACES_PER_SLOT = 20_000
# Buckets one histogram point may carry (the SDK's exponential default is 160); larger points are refused.
MAX_BUCKETS = 1024
MAX_ATTRIBUTE_CHARS = 256
# Exponential histogram scales OTLP allows.
MIN_SCALE, MAX_SCALE = -10, 20

DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE

Attributes = tuple[tuple[str, str], ...]
Edges = tuple[float, ...]


def any_value_text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind == "array_value":
        return ",".join(any_value_text(v) for v in value.array_value.values)
    return ""


def attributes_of(pairs: Iterable[KeyValue]) -> Attributes:
    # Cut long keys and values: a series' memory stays bounded whatever a client sends.
    return tuple(sorted((kv.key[:MAX_ATTRIBUTE_CHARS], any_value_text(kv.value)[:MAX_ATTRIBUTE_CHARS]) for kv in pairs))


@dataclass(slots=True)
class Histogram:
    """A distribution as buckets: ``parts`` maps bucket edges to counts (edges[i]..edges[i+1])."""

    parts: dict[Edges, list[int]] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, edges: Edges, counts: Sequence[int], count: int, total: float, low: float, high: float) -> None:
        existing = self.parts.get(edges)
        if existing is None:
            self.parts[edges] = list(counts)
        else:
            for i, c in enumerate(counts):
                existing[i] += c
        self.count += count
        self.total += total
        self.low = min(self.low, low)
        self.high = max(self.high, high)

    def merge(self, other: Histogram) -> None:
        for edges, counts in other.parts.items():
            self.add(edges, counts, 0, 0.0, other.low, other.high)
        self.count += other.count
        self.total += other.total

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket holding rank q*count, clamped to the seen min/max."""
        buckets = [
            (edges[i], edges[i + 1], c) for edges, counts in self.parts.items() for i, c in enumerate(counts) if c > 0
        ]
        total = sum(c for _, _, c in buckets)
        if total == 0:
            return 0.0
        buckets.sort(key=lambda b: (b[1], b[0]))
        rank = q * total
        seen = 0
        for low, high, c in buckets:
            if seen + c >= rank:
                # min and max bound every value ever recorded, so also the ones in this bucket.
                low = max(low, self.low) if math.isfinite(self.low) else low
                high = min(high, self.high) if math.isfinite(self.high) else high
                if not math.isfinite(low):
                    low = high if math.isfinite(high) else 0.0
                if not math.isfinite(high):
                    high = low
                low = min(low, high)
                return low + (high - low) * max(0.0, rank - seen) / c
            seen += c
        return buckets[-1][1]


@dataclass(slots=True)
class Gauge:
    last: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    total: float = 0.0
    n: int = 0

    def add(self, value: float) -> None:
        self.last = value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.total += value
        self.n += 1

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0


@dataclass(slots=True)
class Slot:
    index: int
    histogram: Histogram | None = None
    gauge: Gauge | None = None
    increase: float = 0.0


@dataclass(frozen=True, slots=True)
class Cumulative:
    """A histogram point as buckets; exponential ones also keep their scale and offset."""

    edges: Edges
    counts: tuple[int, ...]
    count: int
    total: float
    scale: int | None = None
    offset: int = 0


@dataclass(slots=True)
class Series:
    service: str
    instance: str
    name: str
    unit: str
    kind: str  # "histogram", "gauge", "updowncounter", "counter"
    attributes: Attributes
    slots: deque[Slot]
    # Cumulative data: last point per start time, to turn the next one into a delta.
    baselines: OrderedDict[int, Cumulative | float] = field(default_factory=OrderedDict)
    # Since the metrics service started (for Prometheus counters).
    lifetime_count: int = 0
    lifetime_sum: float = 0.0

    def attribute(self, *keys: str) -> str:
        for key in keys:
            for k, v in self.attributes:
                if k == key:
                    return v
        return ""


@dataclass(slots=True)
class WindowView:
    """One series summarised over a window."""

    series: Series
    histogram: Histogram
    gauge: Gauge
    increase: float


@dataclass(slots=True)
class TraceSlot:
    index: int
    spans: int = 0
    error_spans: int = 0
    trace_ids: set[bytes] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted_points: int
    rejected_points: int
    message: str = ""


class MetricStore:
    def __init__(self, window_s: int, max_series: int, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.max_series = max_series
        self.slot_s = max(1.0, window_s / SLOTS_PER_WINDOW)
        self._ring = math.ceil(window_s / self.slot_s) + 1
        self._clock = clock
        self._series: dict[tuple[str, str, str, Attributes], Series] = {}
        self._traces: deque[TraceSlot] = deque(maxlen=self._ring)
        self.series_dropped = 0
        self.points_dropped = 0
        self.invalid_points = 0
        self.spans_total = 0

    # --- ingestion -------------------------------------------------------------------------
    def _slot_index(self, now: float) -> int:
        return int(now // self.slot_s)

    def _slot(self, series: Series, index: int) -> Slot:
        if series.slots and series.slots[-1].index == index:
            return series.slots[-1]
        slot = Slot(index)
        series.slots.append(slot)
        return slot

    def _get_series(
        self, service: str, instance: str, name: str, unit: str, kind: str, attrs: Attributes
    ) -> Series | None:
        key = (service, instance, name, attrs)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series:
                self.series_dropped += 1
                return None
            series = Series(service, instance, name, unit, kind, attrs, deque(maxlen=self._ring))
            self._series[key] = series
        return series

    def ingest_metrics(self, request: ExportMetricsServiceRequest) -> IngestResult:
        now = self._clock()
        index = self._slot_index(now)
        recent_ns = int((now - self.window_s) * 1e9)
        accepted = rejected = 0
        invalid_before = self.invalid_points
        for resource_metrics in request.resource_metrics:
            resource = dict(attributes_of(resource_metrics.resource.attributes))
            service = resource.get("service.name", "unknown_service")
            instance = resource.get("service.instance.id", "")
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    for ok in self._ingest_metric(service, instance, metric, index, recent_ns):
                        if ok:
                            accepted += 1
                        else:
                            rejected += 1
        self.points_dropped += rejected
        invalid = self.invalid_points - invalid_before
        reasons = []
        if rejected - invalid:
            reasons.append(f"series cap of {self.max_series} reached: {rejected - invalid} points dropped")
        if invalid:
            reasons.append(f"{invalid} histogram points with more than {MAX_BUCKETS} buckets or an invalid scale")
        return IngestResult(accepted, rejected, "; ".join(reasons))

    def _ingest_metric(
        self, service: str, instance: str, metric: metrics_pb2.Metric, index: int, recent_ns: int
    ) -> Iterator[bool]:
        kind = metric.WhichOneof("data")
        if kind == "gauge":
            for point in metric.gauge.data_points:
                series = self._get_series(
                    service, instance, metric.name, metric.unit, "gauge", attributes_of(point.attributes)
                )
                if series is None:
                    yield False
                    continue
                gauge = self._slot(series, index).gauge
                if gauge is None:
                    gauge = self._slot(series, index).gauge = Gauge()
                gauge.add(_number(point))
                yield True
        elif kind == "sum":
            monotonic = metric.sum.is_monotonic
            temporality = metric.sum.aggregation_temporality
            for point in metric.sum.data_points:
                attrs = attributes_of(point.attributes)
                if not monotonic and temporality == CUMULATIVE:
                    series = self._get_series(service, instance, metric.name, metric.unit, "updowncounter", attrs)
                    if series is None:
                        yield False
                        continue
                    slot = self._slot(series, index)
                    if slot.gauge is None:
                        slot.gauge = Gauge()
                    slot.gauge.add(_number(point))
                    yield True
                    continue
                series = self._get_series(service, instance, metric.name, metric.unit, "counter", attrs)
                if series is None:
                    yield False
                    continue
                value = _number(point)
                if temporality == CUMULATIVE:
                    increase = _counter_delta(series, point.start_time_unix_nano, value, recent_ns)
                else:
                    increase = value
                if increase:
                    self._slot(series, index).increase += increase
                    series.lifetime_sum += increase
                yield True
        elif kind in ("histogram", "exponential_histogram"):
            hist = metric.histogram if kind == "histogram" else metric.exponential_histogram
            temporality = hist.aggregation_temporality
            hpoints: Iterable[metrics_pb2.HistogramDataPoint | metrics_pb2.ExponentialHistogramDataPoint]
            hpoints = hist.data_points
            for hpoint in hpoints:
                buckets = _buckets(hpoint)
                if buckets is None:
                    self.invalid_points += 1
                    yield False
                    continue
                series = self._get_series(
                    service, instance, metric.name, metric.unit, "histogram", attributes_of(hpoint.attributes)
                )
                if series is None:
                    yield False
                    continue
                low = hpoint.min if hpoint.HasField("min") else math.inf
                high = hpoint.max if hpoint.HasField("max") else -math.inf
                delta: Cumulative | None = buckets
                if temporality == CUMULATIVE:
                    delta = _histogram_delta(series, hpoint.start_time_unix_nano, buckets, recent_ns)
                if delta is not None and delta.count > 0:
                    slot = self._slot(series, index)
                    if slot.histogram is None:
                        slot.histogram = Histogram()
                    slot.histogram.add(delta.edges, delta.counts, delta.count, delta.total, low, high)
                    series.lifetime_count += delta.count
                    series.lifetime_sum += delta.total
                yield True
        # Summaries carry no buckets the dashboard can merge; they are ignored.

    def ingest_spans(self, request: ExportTraceServiceRequest) -> int:
        index = self._slot_index(self._clock())
        if not self._traces or self._traces[-1].index != index:
            self._traces.append(TraceSlot(index))
        slot = self._traces[-1]
        count = 0
        for resource_spans in request.resource_spans:
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    count += 1
                    if span.status.code == Status.STATUS_CODE_ERROR:
                        slot.error_spans += 1
                    if len(slot.trace_ids) < MAX_TRACES_PER_SLOT:
                        slot.trace_ids.add(span.trace_id)
        slot.spans += count
        self.spans_total += count
        return count

    # --- queries ---------------------------------------------------------------------------
    @property
    def series_count(self) -> int:
        return len(self._series)

    def _first_index(self, window_s: float) -> int:
        return self._slot_index(self._clock() - window_s)

    def window(self, window_s: float, names: Iterable[str] | None = None) -> list[WindowView]:
        """Every series with data in the last ``window_s`` seconds (optionally only these names)."""
        first = self._first_index(window_s)
        wanted = set(names) if names is not None else None
        views = []
        for series in self._series.values():
            if wanted is not None and series.name not in wanted:
                continue
            if not series.slots or series.slots[-1].index < first:
                continue
            histogram, gauge, increase = Histogram(), Gauge(), 0.0
            for slot in series.slots:
                if slot.index < first:
                    continue
                if slot.histogram is not None:
                    histogram.merge(slot.histogram)
                if slot.gauge is not None:
                    # Per-slot figures: the mean of slot means, the overall min/max and the latest value.
                    gauge.total += slot.gauge.mean
                    gauge.n += 1
                    gauge.low = min(gauge.low, slot.gauge.low)
                    gauge.high = max(gauge.high, slot.gauge.high)
                    gauge.last = slot.gauge.last
                increase += slot.increase
            views.append(WindowView(series, histogram, gauge, increase))
        return views

    def traces(self, window_s: float) -> tuple[int, int, int]:
        """(spans, error spans, distinct trace ids) in the window."""
        first = self._first_index(window_s)
        spans = errors = 0
        ids: set[bytes] = set()
        for slot in self._traces:
            if slot.index >= first:
                spans += slot.spans
                errors += slot.error_spans
                ids |= slot.trace_ids
        return spans, errors, len(ids)

    def evict_stale(self) -> int:
        """Forget series with no data inside the window, freeing room under the cap."""
        first = self._first_index(self.window_s)
        stale = [key for key, s in self._series.items() if not s.slots or s.slots[-1].index < first]
        for key in stale:
            del self._series[key]
        return len(stale)

    def reported_within(self, series: Series, seconds: float) -> bool:
        """Whether ``series`` received data in the last ``seconds`` (to the store's slot width)."""
        return bool(series.slots) and series.slots[-1].index >= self._first_index(seconds)

    def all_series(self) -> list[Series]:
        return list(self._series.values())

    def slot_indices(self, window_s: float) -> range:
        """The time slots the last ``window_s`` seconds cover, oldest first (slot i starts at i * slot_s)."""
        return range(self._first_index(window_s), self._slot_index(self._clock()) + 1)


def _number(point: metrics_pb2.NumberDataPoint) -> float:
    return float(point.as_int) if point.WhichOneof("value") == "as_int" else point.as_double


def _buckets(point: metrics_pb2.HistogramDataPoint | metrics_pb2.ExponentialHistogramDataPoint) -> Cumulative | None:
    """The point's buckets as edges and counts; None for a point too large or malformed to keep."""
    total = point.sum if point.HasField("sum") else 0.0
    if isinstance(point, metrics_pb2.HistogramDataPoint):
        bounds = tuple(point.explicit_bounds)
        counts = tuple(point.bucket_counts)
        if len(counts) > MAX_BUCKETS:
            return None
        if len(counts) != len(bounds) + 1:
            # No buckets at all (allowed by OTLP): keep the count, in one open bucket.
            return Cumulative((-math.inf, math.inf), (point.count,), point.count, total)
        return Cumulative((-math.inf, *bounds, math.inf), counts, point.count, total)
    # Exponential: bucket i of the positive range spans (base**(offset+i), base**(offset+i+1)], base = 2**2**-scale.
    positive = tuple(point.positive.bucket_counts)
    if len(positive) >= MAX_BUCKETS or not MIN_SCALE <= point.scale <= MAX_SCALE:
        return None
    offset = point.positive.offset
    try:
        edges = tuple(2.0 ** ((offset + i) / 2.0**point.scale) for i in range(len(positive) + 1))
    except OverflowError:
        return None
    # Zero (and, for durations, never-seen negative) values go in a bucket from 0 to the first edge.
    below = point.zero_count + sum(point.negative.bucket_counts)
    return Cumulative((0.0, *edges), (below, *positive), point.count, total, point.scale, offset)


def _remember(series: Series, start_ns: int, value: Cumulative | float) -> None:
    series.baselines[start_ns] = value
    series.baselines.move_to_end(start_ns)
    while len(series.baselines) > MAX_BASELINES:
        series.baselines.popitem(last=False)


def _counter_delta(series: Series, start_ns: int, value: float, recent_ns: int) -> float:
    previous = series.baselines.get(start_ns)
    _remember(series, start_ns, value)
    if isinstance(previous, float) and value >= previous:
        return value - previous
    # First point of this start time (or a reset): all of it is new if it started inside the window;
    # an older start means we only missed the earlier points, so it only becomes the baseline.
    return value if start_ns >= recent_ns else 0.0


def _histogram_delta(series: Series, start_ns: int, point: Cumulative, recent_ns: int) -> Cumulative | None:
    previous = series.baselines.get(start_ns)
    _remember(series, start_ns, point)
    if isinstance(previous, Cumulative) and point.count >= previous.count:
        old = _align(previous, point)
        if old is None:
            return None  # buckets that cannot be lined up: skip this interval, the next one works
        return Cumulative(
            point.edges,
            tuple(c - o for c, o in zip(point.counts, old.counts, strict=True)),
            point.count - old.count,
            point.total - old.total,
            point.scale,
            point.offset,
        )
    # First point of this start time (or a reset): all of it is new if it started inside the window;
    # an older start means we only missed the earlier points, so it only becomes the baseline.
    return point if start_ns >= recent_ns else None


def _align(old: Cumulative, new: Cumulative) -> Cumulative | None:
    """``old`` in ``new``'s buckets: the same, or an exponential histogram that grew or was downscaled."""
    if old.edges == new.edges:
        return old
    if old.scale is None or new.scale is None or new.scale > old.scale:
        return None
    # Lowering the scale by k merges 2**k neighbouring buckets: index i becomes i >> k.
    shift = old.scale - new.scale
    merged: dict[int, int] = {}
    for i, count in enumerate(old.counts[1:]):
        if count:
            target = (old.offset + i) >> shift
            merged[target] = merged.get(target, 0) + count
    size = len(new.counts) - 1
    if any(not new.offset <= target < new.offset + size for target in merged):
        return None
    counts = (old.counts[0], *(merged.get(new.offset + i, 0) for i in range(size)))
    return Cumulative(new.edges, counts, old.count, old.total, new.scale, new.offset)
