"""Chat settings, read once from the environment at start."""

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
    env_url,
)
from studyassist.core.localmodel import env_model_dir

from chat.grounding import DEFAULT_MIN_COVERAGE, DEFAULT_MIN_VECTOR

DEFAULT_AGENTS_FILE = Path(__file__).with_name("agents.toml")
MAX_TASK_TTL_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Settings:
    port: int
    storage_addr: str
    embedding_addr: str
    # Any OpenAI-compatible server (LM Studio by default; Ollama, vLLM, llama.cpp, transformers serve).
    llm_base_url: str
    # Empty: the first model the server lists.
    llm_model: str
    llm_api_key: str
    # A local transformers model directory: chat serves it with `transformers serve` (a child process
    # on a free 127.0.0.1 port) and uses it instead of llm_base_url. None: use llm_base_url.
    llm_model_dir: Path | None
    # Whole-request limit for one LLM call (the stream included).
    llm_timeout_s: float
    # How often the LLM server is probed, so one that comes up later is used without a restart.
    llm_probe_interval_s: float
    # Tokens of context (instructions + passages + memory + question) sent to the model.
    context_tokens: int
    cache_ttl_s: float
    cache_entries: int
    agents_file: Path
    # Tasks (async mode) kept in memory at most; the oldest finished ones are dropped first.
    max_tasks: int
    # How long a task's state and result stay readable (in Redis, and in this replica's memory).
    task_ttl_s: float
    # A running task's lease: its replica renews it every third of this; a task whose lease ran out
    # (its replica crashed) is failed for every poller.
    task_lease_s: float
    # Prefix of every Redis key this service writes (answers under "answer:", tasks under "task:").
    redis_prefix: str
    metrics_addr: str
    # Chat abstains when no retrieved passage holds this idf-weighted share of the question's terms
    # and none is this close in meaning (cosine); chat.grounding says how they were chosen.
    abstain_min_coverage: float
    abstain_min_vector: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        agents_file = Path(env_str(env, "CHAT_AGENTS_FILE", str(DEFAULT_AGENTS_FILE)))
        if not agents_file.is_file():
            raise ConfigError(f"CHAT_AGENTS_FILE={str(agents_file)!r} is not a file")
        redis_prefix = env_str(env, "CHAT_REDIS_PREFIX", "chat:")
        if len(redis_prefix) > 100 or any(c.isspace() for c in redis_prefix):
            raise ConfigError(f"CHAT_REDIS_PREFIX={redis_prefix!r} must be at most 100 characters without spaces")
        task_ttl_s = env_float(env, "CHAT_TASK_TTL_S", 3600.0, minimum=1.0)
        if not task_ttl_s <= MAX_TASK_TTL_S:
            raise ConfigError(f"CHAT_TASK_TTL_S={task_ttl_s} must be at most {MAX_TASK_TTL_S:g} (30 days)")
        return cls(
            port=env_service_port(env, "chat"),
            storage_addr=env_peer_address(env, "storage"),
            embedding_addr=env_peer_address(env, "embedding"),
            llm_base_url=env_url(env, "LLM_BASE_URL", "http://localhost:1234/v1", schemes=("http", "https")),
            llm_model=env_str(env, "LLM_MODEL", ""),
            # Local servers ignore the key, but the SDK refuses an empty one.
            llm_api_key=env_str(env, "LLM_API_KEY", "not-needed"),
            llm_model_dir=env_model_dir(env, "LLM_MODEL_DIR"),
            llm_timeout_s=env_float(env, "LLM_TIMEOUT_S", 120.0, minimum=0.1),
            llm_probe_interval_s=env_float(env, "LLM_PROBE_INTERVAL_S", 10.0, minimum=0.1),
            context_tokens=env_int(env, "CHAT_CONTEXT_TOKENS", 3000, minimum=256),
            cache_ttl_s=env_float(env, "CHAT_CACHE_TTL_S", 3600.0),
            cache_entries=env_int(env, "CHAT_CACHE_ENTRIES", 10_000),
            agents_file=agents_file,
            max_tasks=env_int(env, "CHAT_MAX_TASKS", 1000, minimum=1),
            task_ttl_s=task_ttl_s,
            task_lease_s=env_float(env, "CHAT_TASK_LEASE_S", 10.0, minimum=0.3),
            redis_prefix=redis_prefix,
            metrics_addr=env_peer_address(env, "metrics"),
            abstain_min_coverage=_share(env, "CHAT_ABSTAIN_MIN_COVERAGE", DEFAULT_MIN_COVERAGE),
            abstain_min_vector=env_float(env, "CHAT_ABSTAIN_MIN_VECTOR", DEFAULT_MIN_VECTOR, minimum=-1.0),
        )


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = env_float(env, name, default, minimum=0.0)
    if value > 1.0:
        raise ConfigError(f"{name}={value} must be between 0 and 1")
    return value
