"""Settings of the metrics service, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from studyassist.core.config import ConfigError, env_float, env_int, env_port, env_service_port

# Calls whose duration is the LLM's or the client's, not the API's: the p95 rule leaves them out.
# Calls whose duration is the LLM's or the client's (streams, uploads), as gRPC methods and as
# the gateway's HTTP routes for them.
DEFAULT_P95_EXCLUDE = (
    "StreamChat,Chat,WatchFile,WatchChatTask,UploadFile,"
    "POST /v1/chat:stream,POST /v1/chat,POST /v1/files,GET /v1/files/{file_id}:watch,"
    "GET /v1/chat/tasks/{task_id}:watch"
)


@dataclass(frozen=True, slots=True)
class Settings:
    port: int
    http_port: int
    # History kept in memory, seconds; the longest window the dashboard can show.
    window_s: int
    max_series: int
    alert_pool_utilisation: float
    alert_p95_seconds: float
    alert_error_rate: float
    alert_eval_interval_s: float
    alert_window_s: int
    alert_min_requests: int
    alert_p95_exclude: frozenset[str]

    @property
    def metrics_addr(self) -> str:
        # The metrics service does not send its own telemetry to itself (each export would be traced
        # and exported again); with OTEL_EXPORTER_OTLP_ENDPOINT set it reports to that collector.
        return ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        window_s = env_int(env, "METRICS_WINDOW_S", 900, minimum=10, maximum=7 * 24 * 3600)
        alert_window_s = env_int(env, "ALERT_WINDOW_S", 60, minimum=1)
        if alert_window_s > window_s:
            raise ConfigError(f"ALERT_WINDOW_S={alert_window_s} must not exceed METRICS_WINDOW_S={window_s}")
        error_rate = env_float(env, "ALERT_ERROR_RATE", 0.05)
        pool = env_float(env, "ALERT_POOL_UTILISATION", 0.85)
        for name, value in (("ALERT_ERROR_RATE", error_rate), ("ALERT_POOL_UTILISATION", pool)):
            if value > 1:
                raise ConfigError(f"{name}={value} is a fraction and must be <= 1 (0.05 means 5 %)")
        interval = env_float(env, "ALERT_EVAL_INTERVAL_S", 15.0)
        if interval <= 0:
            raise ConfigError(f"ALERT_EVAL_INTERVAL_S={interval} must be > 0")
        exclude = env.get("ALERT_P95_EXCLUDE", DEFAULT_P95_EXCLUDE)
        return cls(
            port=env_service_port(env, "metrics"),
            http_port=env_port(env, "METRICS_HTTP_PORT", 9464),
            window_s=window_s,
            max_series=env_int(env, "METRICS_MAX_SERIES", 2000, minimum=1),
            alert_pool_utilisation=pool,
            alert_p95_seconds=env_float(env, "ALERT_P95_SECONDS", 0.5),
            alert_error_rate=error_rate,
            alert_eval_interval_s=interval,
            alert_window_s=alert_window_s,
            alert_min_requests=env_int(env, "ALERT_MIN_REQUESTS", 20, minimum=1),
            alert_p95_exclude=frozenset(m.strip() for m in exclude.split(",") if m.strip()),
        )
