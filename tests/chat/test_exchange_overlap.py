"""The steps of one exchange overlap: the response-cache lookup does not wait for the question's
embedding, and a hit cancels it. Storage and embedding are in-process fakes, so the order of the
calls is what is tested, not their speed."""

from __future__ import annotations

import asyncio
from typing import Any

from chat.agents import AgentRegistry
from chat.config import DEFAULT_AGENTS_FILE
from chat.llm import LlmBackend
from chat.responses import ResponseCache, cache_key
from chat.servicer import ChatServicer
from chat.tasks import TaskStore
from studyassist.chat.v1 import chat_pb2
from studyassist.core.cache import LruTtlCache, TwoLayerCache
from studyassist.embedding.v1 import embedding_pb2
from studyassist.storage.v1 import storage_pb2

USER = "u1"
VERSION = "v7"


class FakeStorage:
    def __init__(self, history: list[storage_pb2.Message] | None = None) -> None:
        self.history = history or []
        self.calls: list[str] = []

    async def CreateSession(self, request: Any, **_: Any) -> storage_pb2.Session:
        self.calls.append("CreateSession")
        return storage_pb2.Session(session_id="s-new")

    async def ListMessages(self, request: Any, **_: Any) -> storage_pb2.ListMessagesResponse:
        self.calls.append("ListMessages")
        return storage_pb2.ListMessagesResponse(messages=self.history)

    async def GetDocumentSetVersion(self, request: Any, **_: Any) -> storage_pb2.DocumentSetVersion:
        self.calls.append("GetDocumentSetVersion")
        return storage_pb2.DocumentSetVersion(version=VERSION)

    async def SearchChunks(self, request: Any, **_: Any) -> storage_pb2.SearchChunksResponse:
        self.calls.append("SearchChunks")
        return storage_pb2.SearchChunksResponse()

    async def AppendMessages(self, request: Any, **_: Any) -> storage_pb2.AppendMessagesResponse:
        self.calls.append("AppendMessages")
        return storage_pb2.AppendMessagesResponse(
            messages=[storage_pb2.Message(message_id="m1"), storage_pb2.Message(message_id="m2")]
        )


class SlowEmbedding:
    """Answers only when released; records whether its caller gave up."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.cancelled = 0

    async def Embed(self, request: Any, **_: Any) -> embedding_pb2.EmbedResponse:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return embedding_pb2.EmbedResponse(embeddings=[embedding_pb2.Embedding(values=[0.1] * 4)])


def make_servicer(storage: FakeStorage, embedding: SlowEmbedding) -> tuple[ChatServicer, ResponseCache]:
    cache = ResponseCache(TwoLayerCache(prefix="t:", local=LruTtlCache(100, 60.0)))
    # Never probed: extractive mode, no LLM server needed.
    llm = LlmBackend("http://127.0.0.1:9/v1", "", "x", 5.0, 60.0)
    servicer = ChatServicer(
        AgentRegistry.from_file(DEFAULT_AGENTS_FILE),
        storage,  # type: ignore[arg-type]
        embedding,  # type: ignore[arg-type]
        llm,
        cache,
        TaskStore(4),
        4096,
    )
    return servicer, cache


async def test_a_cache_hit_does_not_wait_for_the_embedding_and_cancels_it() -> None:
    storage, embedding = FakeStorage(), SlowEmbedding()
    servicer, cache = make_servicer(storage, embedding)
    agent = servicer.agents.agents[0].agent_id
    question = "What does quicksort do?"
    key = cache_key(USER, agent, question, [], VERSION, servicer.llm.backend_name)
    await cache.put(key, chat_pb2.ChatResponse(answer="It partitions [1].", backend="llm:m"))

    request = chat_pb2.ChatRequest(agent_id=agent, message=question)
    response = await asyncio.wait_for(servicer._whole(USER, request, 10.0), 5.0)

    assert response.cached and response.answer == "It partitions [1]."
    assert response.session_id == "s-new" and response.message_id == "m2"
    assert embedding.started == 1 and embedding.cancelled == 1
    assert "SearchChunks" not in storage.calls


async def test_a_miss_searches_with_the_embedding_once_it_comes() -> None:
    storage, embedding = FakeStorage(), SlowEmbedding()
    servicer, cache = make_servicer(storage, embedding)
    agent = servicer.agents.agents[0].agent_id
    request = chat_pb2.ChatRequest(agent_id=agent, message="What does merge sort do?")
    answering = asyncio.ensure_future(servicer._whole(USER, request, 10.0))
    await asyncio.sleep(0.05)
    # Session, version and cache lookup are done; only the embedding (and what needs it) is waiting.
    assert not answering.done()
    assert {"CreateSession", "GetDocumentSetVersion"} <= set(storage.calls)
    assert "SearchChunks" not in storage.calls
    embedding.release.set()
    response = await asyncio.wait_for(answering, 5.0)
    assert not response.cached and response.backend == "extractive"
    assert storage.calls[-2:] == ["SearchChunks", "AppendMessages"]
    # Cached for the next asker of the same question.
    key = cache_key(USER, agent, request.message, [], VERSION, servicer.llm.backend_name)
    assert await cache.get(key) is not None


async def test_a_follow_up_is_not_looked_up_in_the_cache() -> None:
    history = [
        storage_pb2.Message(role=storage_pb2.ROLE_USER, content="What is a heap?"),
        storage_pb2.Message(role=storage_pb2.ROLE_ASSISTANT, content="A tree with the heap property."),
    ]
    storage, embedding = FakeStorage(history), SlowEmbedding()
    embedding.release.set()
    servicer, cache = make_servicer(storage, embedding)
    agent = servicer.agents.agents[0].agent_id
    question = "And heapsort?"
    key = cache_key(USER, agent, question, [], VERSION, servicer.llm.backend_name)
    await cache.put(key, chat_pb2.ChatResponse(answer="stale", backend="extractive"))

    request = chat_pb2.ChatRequest(agent_id=agent, message=question, session_id="s-old")
    response = await asyncio.wait_for(servicer._whole(USER, request, 10.0), 5.0)
    assert not response.cached and response.answer != "stale"
    assert response.session_id == "s-old"
    assert "CreateSession" not in storage.calls and "SearchChunks" in storage.calls
