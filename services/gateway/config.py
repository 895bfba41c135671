"""Gateway settings, read once from the environment and validated."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from studyassist.core.config import (
    CommonSettings,
    ConfigError,
    env_float,
    env_int,
    env_peer_address,
    env_service_port,
    env_str,
)
from studyassist.core.secrets import MIN_SECRET_BYTES, check_production_key, require_key_length

from gateway.backoff import BackoffSettings

DEFAULT_WEB_DIST = Path(__file__).resolve().parent / "web" / "dist"
# Same shape as the addresses accepted at registration (gateway.auth.EMAIL_RE).
EMAIL_RE = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}")


@dataclass(frozen=True, slots=True)
class Settings:
    port: int
    chat_addr: str
    storage_addr: str
    metrics_addr: str
    jwt_secret: str
    jwt_issuer: str
    jwt_audience: str
    access_token_ttl_s: int
    refresh_token_ttl_s: int
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    upload_max_bytes: int
    rate_limit_per_minute: int
    rate_limit_ip_per_minute: int
    web_dist_dir: Path
    descriptor_refresh_s: float
    sse_heartbeat_s: float
    # How long an answer stream may show no sign of life (no message, no heartbeat) before it ends
    # with a retryable error; the web app applies the same bound to what it receives.
    stream_stall_timeout_s: float
    # Slow clients (gateway.connections): a request's headers must arrive within this, and a
    # response may wait this long on a client that reads nothing before the connection is cut.
    header_timeout_s: float
    send_idle_timeout_s: float
    # After SIGTERM, how long the gateway keeps its socket answering 503 + Retry-After (gateway.drain)
    # before it stops accepting and lets what is in flight finish.
    drain_s: float
    user_cache_ttl_s: float
    password_hash_concurrency: int
    password_hash_queue: int
    password_hash_time_cost: int
    password_hash_memory_kib: int
    password_hash_parallelism: int
    # Lower-cased emails of the administrators (who may call admin-only backends such as metrics).
    admin_emails: frozenset[str]
    # Deadline of unary calls to the chat service (an answer waits on the LLM, up to LLM_TIMEOUT_S).
    chat_timeout_s: float
    # Backoff against password guessing (gateway.backoff).
    sign_in_backoff: BackoffSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        origins = tuple(o.strip().rstrip("/") for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
        for origin in origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"CORS_ORIGINS entry {origin!r} must start with http:// or https://")
        admins = frozenset(e.strip().lower() for e in env.get("ADMIN_EMAILS", "").split(",") if e.strip())
        for email in admins:
            if not EMAIL_RE.fullmatch(email):
                raise ConfigError(f"ADMIN_EMAILS entry {email!r} is not an email address")
        heartbeat_s = env_float(env, "SSE_HEARTBEAT_S", 15.0, minimum=0.5)
        # Three missed heartbeats, and never under 45 s: a student waits that long on a silent answer.
        stall_s = env_float(env, "STREAM_STALL_TIMEOUT_S", max(45.0, 3 * heartbeat_s), minimum=1.0)
        if stall_s <= heartbeat_s:
            raise ConfigError(
                f"STREAM_STALL_TIMEOUT_S ({stall_s:g}) must be longer than SSE_HEARTBEAT_S ({heartbeat_s:g})"
            )
        return cls(
            port=env_service_port(env, "gateway"),
            chat_addr=env_peer_address(env, "chat"),
            storage_addr=env_peer_address(env, "storage"),
            metrics_addr=env_peer_address(env, "metrics"),
            jwt_secret=env.get("JWT_SECRET", "").strip(),
            jwt_issuer=env_str(env, "JWT_ISSUER", "studyassist"),
            jwt_audience=env_str(env, "JWT_AUDIENCE", "studyassist-web"),
            access_token_ttl_s=env_int(env, "ACCESS_TOKEN_TTL_S", 900, minimum=10, maximum=86_400),
            refresh_token_ttl_s=env_int(env, "REFRESH_TOKEN_TTL_S", 30 * 86_400, minimum=60, maximum=365 * 86_400),
            cors_origins=origins,
            max_body_bytes=env_int(env, "MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            upload_max_bytes=env_int(env, "UPLOAD_MAX_BYTES", 50_000_000, minimum=1024),
            rate_limit_per_minute=env_int(env, "RATE_LIMIT_PER_MINUTE", 300),
            rate_limit_ip_per_minute=env_int(env, "RATE_LIMIT_IP_PER_MINUTE", 1200),
            web_dist_dir=Path(env_str(env, "WEB_DIST_DIR", str(DEFAULT_WEB_DIST))).resolve(),
            descriptor_refresh_s=env_float(env, "DESCRIPTOR_REFRESH_S", 30.0, minimum=1.0),
            sse_heartbeat_s=heartbeat_s,
            stream_stall_timeout_s=stall_s,
            header_timeout_s=env_float(env, "HTTP_HEADER_TIMEOUT_S", 10.0, minimum=0.1),
            send_idle_timeout_s=env_float(env, "HTTP_SEND_IDLE_TIMEOUT_S", 30.0, minimum=0.1),
            drain_s=env_float(env, "DRAIN_S", 5.0, minimum=0.0),
            user_cache_ttl_s=env_float(env, "USER_CACHE_TTL_S", 10.0),
            # Half the cores by default: a burst of sign-ins leaves the rest for signed-in students.
            password_hash_concurrency=env_int(
                env, "PASSWORD_HASH_CONCURRENCY", max(1, (os.cpu_count() or 2) // 2), minimum=1, maximum=256
            ),
            password_hash_queue=env_int(env, "PASSWORD_HASH_QUEUE", 256, minimum=1),
            # argon2id cost: OWASP's recommended minimum (19 MiB, 2 passes, 1 lane), ~20 ms of CPU per
            # hash. The library default (64 MiB, 3 passes, 4 lanes) costs ~8x that: 1000 students
            # signing in at once would queue for minutes on a laptop. Stored hashes carry their own
            # parameters, so changing these never locks anyone out.
            password_hash_time_cost=env_int(env, "PASSWORD_HASH_TIME_COST", 2, minimum=1, maximum=10),
            password_hash_memory_kib=env_int(env, "PASSWORD_HASH_MEMORY_KIB", 19_456, minimum=8_192, maximum=1_048_576),
            password_hash_parallelism=env_int(env, "PASSWORD_HASH_PARALLELISM", 1, minimum=1, maximum=16),
            admin_emails=admins,
            # LLM_TIMEOUT_S (120 s) plus retrieval and the rest of the answer; chat also caps its
            # LLM request by the deadline it receives, so this is the longest an answer may take.
            chat_timeout_s=env_float(env, "GATEWAY_CHAT_TIMEOUT_S", 130.0, minimum=1.0),
            sign_in_backoff=BackoffSettings(
                free_attempts=env_int(env, "SIGN_IN_FREE_ATTEMPTS", 5, minimum=1, maximum=1000),
                ip_free_attempts=env_int(env, "SIGN_IN_IP_FREE_ATTEMPTS", 50, minimum=1, maximum=100_000),
                account_max_backoff_s=env_float(env, "SIGN_IN_ACCOUNT_MAX_BACKOFF_S", 60.0, minimum=1.0),
                max_backoff_s=env_float(env, "SIGN_IN_MAX_BACKOFF_S", 900.0, minimum=1.0),
            ),
        )

    def password_hasher(self) -> PasswordHasher:
        return PasswordHasher(
            time_cost=self.password_hash_time_cost,
            memory_cost=self.password_hash_memory_kib,
            parallelism=self.password_hash_parallelism,
        )


def resolve_jwt_secret(settings: Settings, common: CommonSettings) -> str:
    """The signing secret: JWT_SECRET; in development a generated one kept in DATA_DIR/jwt_secret."""
    if settings.jwt_secret:
        require_key_length("JWT_SECRET", settings.jwt_secret)
        if common.production:  # neither a placeholder committed in deploy/ nor a guessable key
            check_production_key("JWT_SECRET", settings.jwt_secret)
        return settings.jwt_secret
    if common.production:
        raise ConfigError("JWT_SECRET is required when ENVIRONMENT=production")
    path = common.data_dir / "jwt_secret"
    try:
        if path.exists():
            secret = path.read_text().strip()
            if len(secret.encode()) >= MIN_SECRET_BYTES:
                return secret
        common.data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        # Created 0600 from the start: the secret is never readable by others, even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret)
        path.chmod(0o600)
    except OSError as exc:
        raise ConfigError(f"cannot keep the development JWT secret in {path}: {exc}") from None
    return secret
