"""Settings read once from the environment, validated, failing fast with the variable's name.

Each service declares a frozen dataclass of its settings and builds it with these readers in a
``from_env`` classmethod; nothing reads ``os.environ`` after start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse


class ConfigError(Exception):
    """A setting is missing or invalid. The message names the variable and what is wrong."""


Environ = Mapping[str, str]


def env_str(env: Environ, name: str, default: str) -> str:
    return env.get(name, default).strip() or default


def env_int(env: Environ, name: str, default: int, *, minimum: int = 0, maximum: int = 2**62) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is out of range [{minimum}, {maximum}]")
    return value


def env_float(env: Environ, name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def env_bool(env: Environ, name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


def env_port(env: Environ, name: str, default: int) -> int:
    # 0 asks the OS for a free port (tests); anything else must be a real TCP port.
    return env_int(env, name, default, minimum=0, maximum=65535)


def env_choice(env: Environ, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(env, name, default).lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def env_address(env: Environ, name: str, default: str) -> str:
    """A gRPC target: ``host:port`` or a ``dns:///host:port`` style URI."""
    value = env_str(env, name, default)
    hostport = value.split("///", 1)[1] if "///" in value else value
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}={value!r} is not a host:port address")
    return value


def env_url(env: Environ, name: str, default: str, *, schemes: tuple[str, ...]) -> str:
    value = env_str(env, name, default)
    if not value:
        return value
    parsed = urlparse(value)
    if parsed.scheme not in schemes or (not parsed.netloc and parsed.scheme not in {"unix"}):
        raise ConfigError(f"{name}={value!r} must be a URL with scheme {' or '.join(schemes)}")
    return value


# Where each service listens by default. Its own port is <NAME>_PORT and its callers dial <NAME>_ADDR,
# both defaulting to the number here, so the mesh's port plan is written once.
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType(
    {"gateway": 8080, "chat": 50051, "storage": 50052, "embedding": 50053, "metrics": 50054}
)


def env_service_port(env: Environ, service: str) -> int:
    """``<SERVICE>_PORT``: the port ``service`` listens on (``CHAT_PORT`` for "chat")."""
    return env_port(env, f"{service.upper()}_PORT", DEFAULT_PORTS[service])


def env_peer_address(env: Environ, service: str) -> str:
    """``<SERVICE>_ADDR``: where to reach ``service`` (``STORAGE_ADDR`` for "storage"), by default on this host."""
    return env_address(env, f"{service.upper()}_ADDR", f"127.0.0.1:{DEFAULT_PORTS[service]}")


@dataclass(frozen=True, slots=True)
class CommonSettings:
    """Settings every service shares."""

    environment: str
    log_level: str
    bind_host: str
    redis_url: str
    otlp_endpoint: str
    shutdown_grace_seconds: float
    data_dir: Path
    # How often metrics are exported and how long finished spans wait before a batch is sent
    # (the OpenTelemetry variables, in milliseconds; tests shorten them).
    metric_export_interval_s: float = 10.0
    span_export_delay_s: float = 1.0

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @classmethod
    def from_env(cls, env: Environ | None = None) -> CommonSettings:
        env = os.environ if env is None else env
        settings = cls(
            environment=env_choice(env, "ENVIRONMENT", "development", ("development", "production")),
            log_level=env_choice(env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            bind_host=env_str(env, "BIND_HOST", "127.0.0.1"),
            redis_url=env_url(env, "REDIS_URL", "", schemes=("redis", "rediss", "unix")),
            # Empty: send telemetry to the metrics service (METRICS_ADDR); "none" disables it.
            otlp_endpoint=env_str(env, "OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            shutdown_grace_seconds=env_float(env, "SHUTDOWN_GRACE_SECONDS", 10.0),
            data_dir=Path(env_str(env, "DATA_DIR", ".data")).resolve(),
            metric_export_interval_s=env_int(env, "OTEL_METRIC_EXPORT_INTERVAL", 10_000, minimum=10) / 1000,
            span_export_delay_s=env_int(env, "OTEL_BSP_SCHEDULE_DELAY", 1000, minimum=10) / 1000,
        )
        if settings.production and settings.redis_url:
            # Imported here: studyassist.core.secrets imports ConfigError from this module.
            from studyassist.core.secrets import check_production_redis_url

            check_production_redis_url(settings.redis_url)
        return settings
