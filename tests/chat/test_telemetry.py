"""Chat's telemetry: the CLIENT span around each LLM request, the LLM histograms (time to first
token, tokens per second) and the answer cache's hit/miss counters per layer.

The chat server is built in this process (port 0) with an in-memory metric reader and span
exporter; storage, embedding and the tiny model behind `transformers serve` are the real ones. The
model gets a server of its own here: the session's may still be busy with the long answers that
earlier tests abandoned (a non-streamed request keeps generating after its caller left).
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chat.config import Settings
from chat.responses import ResponseCache
from chat.server import build
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.cache import LruTtlCache, TwoLayerCache, connect_redis
from studyassist.core.channels import user_metadata
from studyassist.core.config import CommonSettings
from studyassist.core.server import Server
from studyassist.core.telemetry import Telemetry, duration_views
from studyassist.core.testing import ServiceProcess, serving
from studyassist.storage.v1 import storage_pb2_grpc

from tests.chat.conftest import chat_env, chat_stub, new_user
from tests.chat.tinyllm import LlmServer, Relay, start_llm_server


@pytest.fixture(scope="module")
def own_llm(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlmServer, Relay]]:
    server = start_llm_server(tiny_llm_dir, tmp_path_factory.mktemp("telemetry-llm") / "serve.log")
    relay = Relay(server.port)
    relay.start()
    yield server, relay
    relay.stop()
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@dataclass
class Observed:
    chat: chat_pb2_grpc.ChatServiceAsyncStub
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter

    def points(self) -> dict[str, list[Any]]:
        return metric_points(self.reader)

    def llm_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if (s.attributes or {}).get("gen_ai.operation.name")]

    def server_span(self, method: str) -> ReadableSpan:
        [span] = [s for s in self.spans.get_finished_spans() if s.name == f"studyassist.chat.v1.ChatService/{method}"]
        return span


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """The data points of each metric the reader collects now, by name."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def in_memory_telemetry() -> tuple[Telemetry, InMemoryMetricReader, InMemorySpanExporter]:
    """Providers of our own (the global ones stay untouched), read in memory."""
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    meter_provider = MeterProvider(metric_readers=[reader], views=duration_views())
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(
        meter_provider.get_meter("studyassist.chat"),
        tracer_provider.get_tracer("studyassist.chat"),
        meter_provider,
        tracer_provider,
    )
    return telemetry, reader, exporter


@pytest.fixture
async def observed(
    storage_service: ServiceProcess,
    embedding_service: ServiceProcess,
    own_llm: tuple[LlmServer, Relay],
    test_agents_file: Path,
) -> AsyncIterator[Observed]:
    telemetry, reader, exporter = in_memory_telemetry()
    _, relay = own_llm
    settings = Settings.from_env(
        chat_env(storage_service, embedding_service, relay.base_url, CHAT_AGENTS_FILE=str(test_agents_file))
    )
    common = CommonSettings.from_env({"REDIS_URL": ""})

    async def built() -> tuple[Server, int]:
        return await build(settings, common, telemetry)

    try:
        async with serving(built) as address:
            channel, chat = chat_stub(address)
            yield Observed(chat, reader, exporter)
            await channel.close(None)
    finally:
        telemetry.shutdown()


async def test_each_llm_request_has_a_client_span_and_feeds_the_llm_histograms(
    observed: Observed, storage: storage_pb2_grpc.StorageServiceAsyncStub, own_llm: tuple[LlmServer, Relay]
) -> None:
    llm_server, llm_relay = own_llm
    user = await new_user(storage)
    stream = observed.chat.StreamChat(
        chat_pb2.ChatRequest(agent_id="brief", message="What is a binary heap?"), metadata=user_metadata(user)
    )
    events = [event async for event in stream]
    assert events[0].started.backend == f"llm:{llm_server.model}"
    whole = await observed.chat.Chat(
        chat_pb2.ChatRequest(agent_id="brief", message="How long does extract-min take?"),
        metadata=user_metadata(user),
    )
    assert whole.backend == f"llm:{llm_server.model}"

    spans = {bool((s.attributes or {})["gen_ai.request.stream"]): s for s in observed.llm_spans()}
    assert set(spans) == {True, False}
    for streamed, method in ((True, "StreamChat"), (False, "Chat")):
        span = spans[streamed]
        attributes = dict(span.attributes or {})
        assert span.kind == SpanKind.CLIENT and span.name == f"chat {llm_server.model}"
        assert attributes["server.address"] == "127.0.0.1" and attributes["server.port"] == llm_relay.port
        assert attributes["gen_ai.request.model"] == llm_server.model
        assert attributes["gen_ai.usage.output_tokens"] == 12  # the brief agent's max_tokens, as the server reports
        assert isinstance(attributes["gen_ai.usage.input_tokens"], int) and attributes["gen_ai.usage.input_tokens"] > 0
        # A child of the RPC's server span: one trace from the caller to the LLM.
        rpc = observed.server_span(method)
        assert span.parent is not None and span.parent.span_id == rpc.context.span_id
        assert span.context.trace_id == rpc.context.trace_id
    assert 0 < float(spans[True].attributes["gen_ai.response.time_to_first_chunk"]) < 60  # type: ignore[index,arg-type]

    points = observed.points()
    first_token = {p.attributes["gen_ai.request.stream"]: p for p in points["llm.time_to_first_token"]}
    assert {k: p.count for k, p in first_token.items()} == {True: 1, False: 1}
    assert first_token[True].attributes["gen_ai.request.model"] == llm_server.model
    # Seconds, like the RPC's own first_token_ms reported in the done event.
    assert first_token[True].sum == pytest.approx(events[-1].done.timings.first_token_ms / 1000, rel=1e-6)
    speed = {p.attributes["gen_ai.request.stream"]: p for p in points["llm.tokens_per_second"]}
    assert {k: p.count for k, p in speed.items()} == {True: 1, False: 1}
    assert all(p.sum > 0 for p in speed.values())


async def test_answer_cache_hits_and_misses_are_counted_per_layer(
    observed: Observed, storage: storage_pb2_grpc.StorageServiceAsyncStub
) -> None:
    user = await new_user(storage)
    ask = chat_pb2.ChatRequest(agent_id="brief", message="What is a queue?")
    first = await observed.chat.Chat(ask, metadata=user_metadata(user))
    second = await observed.chat.Chat(ask, metadata=user_metadata(user))
    assert not first.cached and second.cached
    points = observed.points()
    # No Redis configured here: the local layer only. The names match the embedding service's
    # (<x>.hits / <x>.misses with "layer"), so the dashboard shows chat.cache.hit_ratio.
    assert {p.attributes["layer"]: p.value for p in points["chat.cache.hits"]} == {"local": 1}
    assert {p.attributes["layer"]: p.value for p in points["chat.cache.misses"]} == {"local": 1}
    # Cached answers are not LLM answers: one request, one span, one first token.
    assert len(observed.llm_spans()) == 1
    assert sum(p.count for p in points["llm.time_to_first_token"]) == 1


async def test_cache_counters_include_the_redis_layer(redis_url: str, key_prefix: str) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    redis = connect_redis(redis_url)
    assert redis is not None
    cache = ResponseCache(
        TwoLayerCache(prefix=key_prefix, local=LruTtlCache(10, 60), redis=redis, ttl_s=60),
        meter=provider.get_meter("studyassist.chat"),
    )
    try:
        assert await cache.get("k") is None  # a miss in both layers
        await cache.put("k", chat_pb2.ChatResponse(answer="a", backend="extractive"))
        assert (hit := await cache.get("k")) is not None and hit.answer == "a"  # local
        cache.cache.local.delete_prefix("")  # as in another replica: only Redis has it
        assert (hit := await cache.get("k")) is not None and hit.answer == "a"  # local miss, Redis hit
        points = metric_points(reader)
    finally:
        await redis.delete(f"{key_prefix}k")
        await redis.aclose()
        provider.shutdown()
    assert {p.attributes["layer"]: p.value for p in points["chat.cache.hits"]} == {"local": 1, "redis": 1}
    assert {p.attributes["layer"]: p.value for p in points["chat.cache.misses"]} == {"local": 2, "redis": 1}
