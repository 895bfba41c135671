"""Wiring: load the model, start the batcher, build the gRPC server (not started)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from opentelemetry import metrics, trace
from studyassist.core.cache import LruTtlCache, TwoLayerCache, connect_redis
from studyassist.core.config import CommonSettings
from studyassist.core.server import Server, ServiceSpec, create_server
from studyassist.core.telemetry import Telemetry
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from embedding.batcher import Batcher
from embedding.config import Settings, batch_token_budget
from embedding.model import SentenceEncoder
from embedding.servicer import EmbeddingServicer

log = logging.getLogger(__name__)

SERVICE_NAME = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
CACHE_PREFIX = "embedding:v1:"


async def build(settings: Settings, common: CommonSettings, telemetry: Telemetry) -> tuple[Server, int]:
    # Loading takes seconds (an ONNX export, when not cached, about ten): keep the event loop free.
    encoder = await asyncio.to_thread(
        SentenceEncoder,
        settings.model_dir,
        device=settings.device,
        dtype=settings.dtype,
        runtime=settings.runtime,
        threads=settings.inference_threads,
        onnx_cache_dir=Path(settings.onnx_cache_dir) if settings.onnx_cache_dir else None,
    )
    # One pass before serving, so the first caller does not pay for kernel selection and warm-up.
    await asyncio.to_thread(encoder.encode, ["warm-up"])
    log.info(
        "model loaded",
        extra={
            "fields": {
                "model_id": encoder.model_id,
                "device": encoder.device,
                "dtype": encoder.dtype,
                "runtime": encoder.runtime_version,
                "load_seconds": round(encoder.load_seconds, 2),
                "threads": settings.inference_threads or "auto",
            }
        },
    )
    return assemble(
        encoder,
        settings,
        redis_url=common.redis_url,
        bind_host=common.bind_host,
        meter=telemetry.meter,
        tracer=telemetry.tracer,
    )


def assemble(
    encoder: SentenceEncoder,
    settings: Settings,
    *,
    redis_url: str,
    bind_host: str = "127.0.0.1",
    meter: metrics.Meter | None = None,
    tracer: trace.Tracer | None = None,
    cache_prefix: str = CACHE_PREFIX,
) -> tuple[Server, int]:
    """The server around an already loaded encoder (tests share one encoder between servers)."""
    batcher = Batcher(
        encoder.embed,
        max_batch_tokens=batch_token_budget(settings.max_batch_tokens, encoder.device),
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        meter=meter,
    )
    redis = connect_redis(redis_url)
    cache = TwoLayerCache(
        cache_prefix, LruTtlCache(settings.cache_entries, settings.cache_ttl_s), redis, ttl_s=settings.cache_ttl_s
    )
    servicer = EmbeddingServicer(
        encoder,
        batcher,
        cache,
        max_texts=settings.max_texts,
        max_text_bytes=settings.max_text_bytes,
        meter=meter,
    )
    server, port = create_server(
        f"{bind_host}:{settings.port}",
        [ServiceSpec(SERVICE_NAME, servicer, embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server)],
        meter=meter,
        tracer=tracer,
    )
    batcher.start()
    server.on_stop.append(batcher.stop)
    if redis is not None:
        server.on_stop.append(redis.aclose)
    return server, port
