"""Async mode across chat replicas, and the health entry that says whether the LLM answers.

Real parts: two chat processes sharing the real Redis (client-side round robin lands a poll or a
watch on either), the real storage and embedding services, the tiny model behind `transformers
serve` reached through a relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.testing import ServiceProcess, spawn_service
from studyassist.storage.v1 import storage_pb2_grpc

from tests.chat.conftest import chat_env, chat_stub, new_user, upload_ready
from tests.chat.tinyllm import LlmServer, Relay

CHAT_SERVICE = "studyassist.chat.v1.ChatService"
LLM_HEALTH = "studyassist.chat.v1.ChatService/llm"
ACTIVE = (chat_pb2.CHAT_TASK_STATE_PENDING, chat_pb2.CHAT_TASK_STATE_RUNNING)
SUCCEEDED = chat_pb2.CHAT_TASK_STATE_SUCCEEDED
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NOTES = "# Heaps\n\nA binary heap keeps the smallest key at the root; insert and extract-min take O(log n).\n"
# The "long" test agent asks the tiny model for 4000 tokens; the LLM limit cuts it off after this
# many seconds and chat answers extractively, so a task surely runs this long.
TASK_SECONDS = 3


@pytest.fixture
async def replicas(
    storage_service: ServiceProcess,
    embedding_service: ServiceProcess,
    llm_relay: Relay,
    test_agents_file: Path,
    redis_url: str,
    key_prefix: str,
) -> AsyncIterator[tuple[chat_pb2_grpc.ChatServiceAsyncStub, chat_pb2_grpc.ChatServiceAsyncStub]]:
    """Two chat processes sharing Redis (under a key prefix of this test's own)."""
    env = chat_env(
        storage_service,
        embedding_service,
        llm_relay.base_url,
        CHAT_AGENTS_FILE=str(test_agents_file),
        REDIS_URL=redis_url,
        CHAT_REDIS_PREFIX=key_prefix,
        LLM_TIMEOUT_S=str(TASK_SECONDS),
    )
    services = await asyncio.gather(*(asyncio.to_thread(spawn_service, "chat", env) for _ in range(2)))
    channels, stubs = zip(*(chat_stub(s.address) for s in services), strict=True)
    try:
        yield stubs[0], stubs[1]
    finally:
        for channel in channels:
            await channel.close(None)
        for service in services:
            service.stop()


async def test_a_task_submitted_on_one_replica_is_polled_and_watched_on_another(
    replicas: tuple[chat_pb2_grpc.ChatServiceAsyncStub, chat_pb2_grpc.ChatServiceAsyncStub],
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
    redis_url: str,
    key_prefix: str,
) -> None:
    first, second = replicas
    user, other = await new_user(storage), await new_user(storage)
    heap = await upload_ready(storage, user, "heaps.md", NOTES)
    submitted = await first.SubmitChatTask(
        chat_pb2.ChatRequest(agent_id="long", message="What does a binary heap keep at the root?"),
        metadata=user_metadata(user),
        timeout=30,
    )
    assert submitted.task_id and submitted.estimated_seconds > 0
    ask = chat_pb2.GetChatTaskRequest(task_id=submitted.task_id)

    watch = second.WatchChatTask(ask, metadata=user_metadata(user), timeout=60)
    now = await watch.read()
    assert isinstance(now, chat_pb2.ChatTask) and now.state in ACTIVE  # the current state, at once

    # While it runs: polled on the other replica; nobody else's; a watch ends at its deadline.
    polled = await second.GetChatTask(ask, metadata=user_metadata(user))
    assert polled.state in ACTIVE and polled.estimated_seconds == submitted.estimated_seconds
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await second.GetChatTask(ask, metadata=user_metadata(other))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [t async for t in second.WatchChatTask(ask, metadata=user_metadata(other))]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    short = second.WatchChatTask(ask, metadata=user_metadata(user), timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for task in short:
            assert task.state in ACTIVE
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    seen = [now] + [task async for task in watch]  # the stream ends by itself after the terminal state
    assert await watch.code() == grpc.StatusCode.OK
    states = [t.state for t in seen]
    assert states[-1] == SUCCEEDED, seen[-1].error
    assert SUCCEEDED not in states[:-1] and len(set(states)) == len(states)
    result = seen[-1].result
    assert result.answer and result.message_id and heap.file_id in {c.file_id for c in result.citations}

    for replica in (first, second):
        assert await replica.GetChatTask(ask, metadata=user_metadata(user)) == seen[-1]
    # Shared under the configured prefix, with the default TTL.
    ttl = redis.Redis.from_url(redis_url).ttl(f"{key_prefix}task:{submitted.task_id}")
    assert isinstance(ttl, int) and 0 < ttl <= 3600


async def test_the_llm_health_entry_follows_the_llm(
    storage_service: ServiceProcess,
    embedding_service: ServiceProcess,
    llm_server: LlmServer,
    test_agents_file: Path,
) -> None:
    relay = Relay(llm_server.port, enabled=False)
    relay.start()
    service = spawn_service(
        "chat",
        chat_env(storage_service, embedding_service, relay.base_url, CHAT_AGENTS_FILE=str(test_agents_file)),
    )
    channel = create_channel(service.address)
    health = health_pb2_grpc.HealthStub(channel)

    async def status(name: str) -> int:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        return int(reply.status)

    try:
        # Extractive mode: the LLM entry says so, yet the service stays ready.
        assert await status(LLM_HEALTH) == NOT_SERVING
        assert await status("") == SERVING and await status(CHAT_SERVICE) == SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=LLM_HEALTH), timeout=30)
        first = await watch.read()
        assert isinstance(first, health_pb2.HealthCheckResponse) and first.status == NOT_SERVING
        relay.enabled = True
        second = await watch.read()  # pushed when the probe finds the LLM, no restart
        assert isinstance(second, health_pb2.HealthCheckResponse) and second.status == SERVING
        watch.cancel()
        assert await status("") == SERVING and await status(CHAT_SERVICE) == SERVING
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        assert (await chat.GetChatStatus(chat_pb2.GetChatStatusRequest())).backend == f"llm:{llm_server.model}"
    finally:
        await channel.close(None)
        service.stop()
        relay.stop()
