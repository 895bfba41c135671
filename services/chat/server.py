"""Wiring: the chat servicer with its storage and embedding channels, LLM backend, cache and tasks.

Health: besides "" and the ChatService (SERVING while the server serves, whichever backend
answers, so extractive mode stays ready), the entry ``studyassist.chat.v1.ChatService/llm`` is
SERVING while the LLM answers and NOT_SERVING in extractive mode, following the LLM probe.

LLM_MODEL_DIR: chat serves that local model directory itself with `transformers serve`, a child
process on a free 127.0.0.1 port (studyassist.core.localmodel), waits for it before it reports
serving, points the LLM backend at it and stops it after the server drained on shutdown. The child
also dies with chat if chat is killed.
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc, decks_pb2, decks_pb2_grpc
from studyassist.core.bootstrap import StartupError
from studyassist.core.cache import LruTtlCache, TwoLayerCache, connect_redis
from studyassist.core.channels import create_channel
from studyassist.core.config import CommonSettings
from studyassist.core.localmodel import (
    DEFAULT_START_TIMEOUT_S,
    LocalModelError,
    LocalModelServer,
    start_local_model,
)
from studyassist.core.server import Server, ServiceSpec, create_server
from studyassist.core.telemetry import Telemetry
from studyassist.embedding.v1 import embedding_pb2_grpc
from studyassist.storage.v1 import storage_pb2_grpc, study_pb2_grpc

from chat.agents import AgentRegistry
from chat.config import Settings
from chat.decks import DeckServicer
from chat.grounding import Grounding
from chat.llm import LlmBackend
from chat.responses import ResponseCache
from chat.servicer import ChatServicer
from chat.tasks import TaskStore

log = logging.getLogger(__name__)

STORAGE = "studyassist.storage.v1.StorageService"
EMBEDDING = "studyassist.embedding.v1.EmbeddingService"
CHAT_SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
DECK_SERVICE = decks_pb2.DESCRIPTOR.services_by_name["DeckService"].full_name
# Health entry saying whether the LLM answers (NOT_SERVING: extractive mode).
LLM_HEALTH_SERVICE = f"{CHAT_SERVICE}/llm"
# A task must end within the LLM's limit plus this (retrieval, saving, the extractive fallback).
TASK_RUN_SLACK_S = 60.0
# How long start-up waits for LLM_MODEL_DIR's server to answer; a slower one is picked up by the probe
# later (answers are extractive until then).
LOCAL_MODEL_START_TIMEOUT_S = DEFAULT_START_TIMEOUT_S
# Tasks get a Redis client of their own with a longer timeout than the caches': a submit waits for
# its write (another replica must find the task at once), and a busy Redis should not drop it.
TASK_REDIS_TIMEOUT_S = 1.0


def _health_status(available: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return health_pb2.HealthCheckResponse.SERVING if available else health_pb2.HealthCheckResponse.NOT_SERVING


async def mirror_llm_health(llm: LlmBackend, health: HealthServicer) -> None:
    """Keep the ``LLM_HEALTH_SERVICE`` entry equal to ``llm.available``, from now on."""
    updates: set[asyncio.Task[None]] = set()

    def publish(available: bool) -> None:
        # HealthServicer.set is a coroutine (it wakes Watch callers); the loop runs it next, in order.
        update = asyncio.get_running_loop().create_task(health.set(LLM_HEALTH_SERVICE, _health_status(available)))
        updates.add(update)
        update.add_done_callback(updates.discard)

    await health.set(LLM_HEALTH_SERVICE, _health_status(llm.available))
    llm.on_availability_change(publish)


async def serve_local_model(settings: Settings) -> LocalModelServer:
    """Start `transformers serve` for LLM_MODEL_DIR and wait (in a thread) until it answers."""
    assert settings.llm_model_dir is not None
    try:
        # Started from the event loop's thread, which lives as long as the process: the child's
        # death signal follows the thread that started it.
        model = start_local_model(settings.llm_model_dir)
    except LocalModelError as exc:
        raise StartupError(str(exc)) from None
    try:
        ready = await asyncio.to_thread(model.wait_ready, LOCAL_MODEL_START_TIMEOUT_S)
    except LocalModelError as exc:
        raise StartupError(str(exc)) from None
    except BaseException:
        await asyncio.to_thread(model.stop)
        raise
    if not ready:
        log.warning(
            "local model not answering yet; extractive answers until it does",
            extra={"fields": {"model_dir": str(model.model_dir), "waited_s": LOCAL_MODEL_START_TIMEOUT_S}},
        )
    return model


async def build(settings: Settings, common: CommonSettings, telemetry: Telemetry) -> tuple[Server, int]:
    local_model = await serve_local_model(settings) if settings.llm_model_dir is not None else None
    try:
        return await _build(settings, common, telemetry, local_model)
    except BaseException:
        if local_model is not None:
            await asyncio.to_thread(local_model.stop)
        raise


async def _build(
    settings: Settings, common: CommonSettings, telemetry: Telemetry, local_model: LocalModelServer | None
) -> tuple[Server, int]:
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
        local_model.base_url if local_model is not None else settings.llm_base_url,
        settings.llm_model,
        settings.llm_api_key,
        settings.llm_timeout_s,
        settings.llm_probe_interval_s,
        tracer=telemetry.tracer,
    )
    # Know before the first request whether an LLM answers; the loop keeps checking afterwards.
    await llm.probe()
    llm.start()
    # The answer cache's Redis client (or none); the tasks have their own below, each under its own prefix.
    redis = connect_redis(common.redis_url)
    cache = ResponseCache(
        TwoLayerCache(
            prefix=f"{settings.redis_prefix}answer:",
            local=LruTtlCache(settings.cache_entries, settings.cache_ttl_s),
            redis=redis,
            ttl_s=settings.cache_ttl_s,
        ),
        meter=telemetry.meter,
    )
    task_redis = connect_redis(common.redis_url, timeout_s=TASK_REDIS_TIMEOUT_S)
    tasks = TaskStore(
        settings.max_tasks,
        redis=task_redis,
        prefix=f"{settings.redis_prefix}task:",
        ttl_s=settings.task_ttl_s,
        run_limit_s=settings.llm_timeout_s + TASK_RUN_SLACK_S,
        lease_s=settings.task_lease_s,
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
        grounding=Grounding(settings.abstain_min_coverage, settings.abstain_min_vector),
        meter=telemetry.meter,
    )
    server, port = create_server(
        f"{common.bind_host}:{settings.port}",
        [
            ServiceSpec(
                CHAT_SERVICE,
                servicer,
                chat_pb2_grpc.add_ChatServiceServicer_to_server,
            ),
            ServiceSpec(
                DECK_SERVICE,
                DeckServicer(
                    storage_pb2_grpc.StorageServiceStub(storage_channel),
                    study_pb2_grpc.StudyServiceStub(storage_channel),
                    llm,
                ),
                decks_pb2_grpc.add_DeckServiceServicer_to_server,
            ),
        ],
        meter=telemetry.meter,
        tracer=telemetry.tracer,
    )
    await mirror_llm_health(llm, server.health)

    async def close() -> None:
        await tasks.close()
        await llm.close()
        await storage_channel.close(None)
        await embedding_channel.close(None)
        for client in (redis, task_redis):
            if client is not None:
                await client.aclose()

    server.on_stop.append(close)
    if local_model is not None:
        # A hook of its own (runs even if the one above fails), after the calls have drained.
        model = local_model
        server.on_stop.append(lambda: asyncio.to_thread(model.stop))
    return server, port
