"""Wiring: the chat servicer with its storage and embedding channels, LLM backend, cache and tasks.

Health: besides "" and the ChatService (SERVING while the server serves, whichever backend
answers, so extractive mode stays ready), the entry ``studyassist.chat.v1.ChatService/llm`` is
SERVING while the LLM answers and NOT_SERVING in extractive mode, following the LLM probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.cache import LruTtlCache, TwoLayerCache, connect_redis
from studyassist.core.channels import create_channel
from studyassist.core.config import CommonSettings
from studyassist.core.server import Server, ServiceSpec, create_server
from studyassist.core.telemetry import Telemetry
from studyassist.embedding.v1 import embedding_pb2_grpc
from studyassist.storage.v1 import storage_pb2_grpc

from chat.agents import AgentRegistry
from chat.config import Settings
from chat.llm import LlmBackend
from chat.responses import ResponseCache
from chat.servicer import ChatServicer
from chat.tasks import TaskStore

log = logging.getLogger(__name__)

STORAGE = "studyassist.storage.v1.StorageService"
EMBEDDING = "studyassist.embedding.v1.EmbeddingService"
CHAT_SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
# Health entry saying whether the LLM answers (NOT_SERVING: extractive mode).
LLM_HEALTH_SERVICE = f"{CHAT_SERVICE}/llm"
# The LLM's availability changes with the probe and with failed requests; health follows within this.
LLM_HEALTH_INTERVAL_S = 0.5
# A task must end within the LLM's limit plus this (retrieval, saving, the extractive fallback).
TASK_RUN_SLACK_S = 60.0


class LlmHealth:
    """Mirrors ``llm.available`` into the health servicer's ``LLM_HEALTH_SERVICE`` entry."""

    def __init__(self, llm: LlmBackend, health: HealthServicer, interval_s: float) -> None:
        self.llm = llm
        self.health = health
        self.interval_s = interval_s
        self._last: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if self.llm.available else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if status != self._last:
            self._last = status
            await self.health.set(LLM_HEALTH_SERVICE, status)

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.create_task(self._loop(), name="llm-health")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sync()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def build(settings: Settings, common: CommonSettings, telemetry: Telemetry) -> tuple[Server, int]:
    agents = AgentRegistry.from_file(settings.agents_file)
    storage_channel = create_channel(
        settings.storage_addr,
        default_timeout=10.0,
        idempotent=[
            (STORAGE, "SearchChunks"),
            (STORAGE, "ListMessages"),
            (STORAGE, "GetDocumentSetVersion"),
        ],
    )
    embedding_channel = create_channel(settings.embedding_addr, default_timeout=10.0, idempotent=[(EMBEDDING, "Embed")])
    llm = LlmBackend(
        settings.llm_base_url,
        settings.llm_model,
        settings.llm_api_key,
        settings.llm_timeout_s,
        settings.llm_probe_interval_s,
    )
    # Know before the first request whether an LLM answers; the loop keeps checking afterwards.
    await llm.probe()
    llm.start()
    # One Redis client (or none) for the answer cache and the tasks, each under its own key prefix.
    redis = connect_redis(common.redis_url)
    cache = ResponseCache(
        TwoLayerCache(
            prefix=f"{settings.redis_prefix}answer:",
            local=LruTtlCache(settings.cache_entries, settings.cache_ttl_s),
            redis=redis,
            ttl_s=settings.cache_ttl_s,
        )
    )
    tasks = TaskStore(
        settings.max_tasks,
        redis=redis,
        prefix=f"{settings.redis_prefix}task:",
        ttl_s=settings.task_ttl_s,
        run_limit_s=settings.llm_timeout_s + TASK_RUN_SLACK_S,
    )
    log.info("chat tasks stored in %s", tasks.backend, extra={"fields": {"prefix": tasks.prefix}})
    servicer = ChatServicer(
        agents,
        storage_pb2_grpc.StorageServiceStub(storage_channel),
        embedding_pb2_grpc.EmbeddingServiceStub(embedding_channel),
        llm,
        cache,
        tasks,
        settings.context_tokens,
    )
    server, port = create_server(
        f"{common.bind_host}:{settings.port}",
        [
            ServiceSpec(
                CHAT_SERVICE,
                servicer,
                chat_pb2_grpc.add_ChatServiceServicer_to_server,
            )
        ],
        meter=telemetry.meter,
        tracer=telemetry.tracer,
    )
    llm_health = LlmHealth(llm, server.health, min(LLM_HEALTH_INTERVAL_S, settings.llm_probe_interval_s))
    await llm_health.start()

    async def close() -> None:
        await llm_health.close()
        await tasks.close()
        await llm.close()
        await storage_channel.close(None)
        await embedding_channel.close(None)
        if redis is not None:
            await redis.aclose()

    server.on_stop.append(close)
    return server, port
