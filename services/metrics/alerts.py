"""Alert rules over the recent window, evaluated continuously; state changes are logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from studyassist.metrics.v1 import metrics_pb2

from metrics.analysis import endpoints, pools
from metrics.config import Settings
from metrics.store import MetricStore

log = logging.getLogger(__name__)

OK = metrics_pb2.ALERT_STATE_OK
FIRING = metrics_pb2.ALERT_STATE_FIRING


@dataclass(slots=True)
class AlertStatus:
    name: str
    threshold: float
    description: str
    state: metrics_pb2.AlertState = OK
    value: float = 0.0
    detail: str = ""
    # The figures behind value, by name (metrics.proto Alert.args): the web app's text from them.
    args: dict[str, str] = field(default_factory=dict)
    since: float = 0.0

    def to_proto(self) -> metrics_pb2.Alert:
        since = Timestamp()
        since.FromNanoseconds(int(self.since * 1e9))
        description = f"{self.description}; {self.detail}" if self.detail else self.description
        return metrics_pb2.Alert(
            name=self.name,
            state=self.state,
            value=self.value,
            threshold=self.threshold,
            since=since,
            description=description,
            code=self.name,
            args=self.args,
        )


class AlertEvaluator:
    """Three rules: pool utilisation, p95 response time, error rate (thresholds from settings)."""

    def __init__(self, store: MetricStore, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        started = clock()
        self.alerts = {
            "pool_utilisation": AlertStatus(
                "pool_utilisation",
                settings.alert_pool_utilisation,
                "connection pool in use / max, mean over the alert window, worst pool",
                since=started,
            ),
            "response_time_p95": AlertStatus(
                "response_time_p95",
                settings.alert_p95_seconds,
                "p95 server duration in seconds over the alert window, worst endpoint",
                since=started,
            ),
            "error_rate": AlertStatus(
                "error_rate",
                settings.alert_error_rate,
                "calls the server failed (gRPC INTERNAL, UNAVAILABLE, ...; HTTP 5xx) / all calls over the alert window",
                since=started,
            ),
        }

    def evaluate(self) -> list[AlertStatus]:
        settings = self._settings
        views = self._store.window(settings.alert_window_s)
        pool_value, pool_detail = 0.0, ""
        pool_args: dict[str, str] = {}
        for use in pools(views):
            if use.mean_utilisation > pool_value:
                pool_value = use.mean_utilisation
                pool_detail = f"{use.service} pool {use.pool}: {use.in_use_mean:.1f} of {use.max_size:g} in use"
                pool_args = {
                    "service": use.service,
                    "pool": use.pool,
                    "in_use": f"{use.in_use_mean:.1f}",
                    "max": f"{use.max_size:g}",
                }
        p95_value, p95_detail = 0.0, ""
        p95_args: dict[str, str] = {}
        total = errors = 0
        for endpoint in endpoints(views):
            total += endpoint.count
            errors += endpoint.errors
            if endpoint.method in settings.alert_p95_exclude:
                continue
            p95 = endpoint.percentile_ms(0.95) / 1000
            if p95 > p95_value:
                p95_value, p95_detail = p95, f"{endpoint.service} {endpoint.method}: {endpoint.count} calls"
                p95_args = {"service": endpoint.service, "method": endpoint.method, "calls": str(endpoint.count)}
        error_value = errors / total if total >= settings.alert_min_requests else 0.0
        error_detail = f"{errors} of {total} calls failed" if total else ""
        error_args = {"errors": str(errors), "calls": str(total)} if total else {}
        self._set("pool_utilisation", pool_value, pool_detail, pool_args)
        self._set("response_time_p95", p95_value, p95_detail, p95_args)
        self._set("error_rate", error_value, error_detail, error_args)
        return list(self.alerts.values())

    def _set(self, name: str, value: float, detail: str, args: dict[str, str]) -> None:
        alert = self.alerts[name]
        state = FIRING if value > alert.threshold else OK
        alert.value, alert.detail, alert.args = value, detail, args
        if state != alert.state:
            alert.state, alert.since = state, self._clock()
            log.warning(
                "alert %s %s",
                name,
                "firing" if state == FIRING else "cleared",
                extra={"fields": {"alert": name, "value": value, "threshold": alert.threshold, "detail": detail}},
            )

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                self.evaluate()
                evicted = self._store.evict_stale()
                if evicted:
                    log.debug("evicted %d stale series", evicted)
            except Exception:
                log.exception("alert evaluation failed")
            await asyncio.sleep(interval_s)
