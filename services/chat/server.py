"""Wiring: the chat servicer with its storage and embedding channels, LLM backend, cache and tasks."""

from __future__ import annotations

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

STORAGE = "studyassist.storage.v1.StorageService"
EMBEDDING = "studyassist.embedding.v1.EmbeddingService"


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
    cache = ResponseCache(
        TwoLayerCache(
            prefix="chat:answer:",
            local=LruTtlCache(settings.cache_entries, settings.cache_ttl_s),
            redis=connect_redis(common.redis_url),
            ttl_s=settings.cache_ttl_s,
        )
    )
    tasks = TaskStore(settings.max_tasks)
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
                chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
                servicer,
                chat_pb2_grpc.add_ChatServiceServicer_to_server,
            )
        ],
        meter=telemetry.meter,
        tracer=telemetry.tracer,
    )

    async def close() -> None:
        await tasks.close()
        await llm.close()
        await storage_channel.close(None)
        await embedding_channel.close(None)
        if cache.cache.redis is not None:
            await cache.cache.redis.aclose()

    server.on_stop.append(close)
    return server, port
