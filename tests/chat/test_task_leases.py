"""Leases of async chat tasks: a task whose replica died (kill -9) ends FAILED for every poller long
before its run limit, a live replica's task keeps running, and a task is readable on another replica
as soon as SubmitChatTask returned.

Real parts: the real Redis (and a TCP relay to it that a test cuts, for a replica cut off from
Redis), two chat processes sharing it, the real storage and embedding services, the tiny model
behind `transformers serve`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from chat.tasks import LEASE_EXPIRED, Task, TaskStore
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.cache import connect_redis
from studyassist.core.channels import user_metadata
from studyassist.core.errors import NotFound
from studyassist.core.testing import ServiceProcess, TcpProxy, spawn_service
from studyassist.storage.v1 import storage_pb2_grpc

from tests.chat.conftest import chat_env, chat_stub, new_user, upload_ready
from tests.chat.test_task_store import ANSWER, gated
from tests.chat.tinyllm import Relay

PENDING = chat_pb2.CHAT_TASK_STATE_PENDING
RUNNING = chat_pb2.CHAT_TASK_STATE_RUNNING
SUCCEEDED = chat_pb2.CHAT_TASK_STATE_SUCCEEDED
FAILED = chat_pb2.CHAT_TASK_STATE_FAILED
ACTIVE = (PENDING, RUNNING)
NOTES = "# Heaps\n\nA binary heap keeps the smallest key at the root; insert and extract-min take O(log n).\n"
LEASE_S = 1.0
# The LLM's limit in the chat processes: a task's run limit is this plus a minute, far past the
# watch below, so a task that ends there ended by its lease.
LLM_TIMEOUT_S = 120


@pytest.fixture
async def shared_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect_redis(redis_url)
    assert client is not None
    yield client
    await client.aclose()


async def redis_now(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


async def test_an_orphan_whose_lease_ran_out_is_failed_once_for_every_reader(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    # What a replica killed mid-task leaves: RUNNING, its run limit an hour away, its lease past.
    orphan = Task("1" * 32, "alice", 5.0, time.time() + 3600, RUNNING)
    key = key_prefix + orphan.task_id
    await shared_redis.hset(key, mapping={**orphan.fields(), "lease_until": repr(await redis_now(shared_redis) - 1)})
    await shared_redis.expire(key, 60)
    here, there = (
        TaskStore(10, redis=shared_redis, prefix=key_prefix),
        TaskStore(10, redis=shared_redis, prefix=key_prefix),
    )
    try:
        task = await here.get("alice", orphan.task_id)
        assert (task.state, task.error) == (FAILED, LEASE_EXPIRED)
        assert [(t.state, t.error) async for t in there.watch("alice", orphan.task_id, 5.0)] == [
            (FAILED, LEASE_EXPIRED)
        ]
        # Failed in Redis itself, not only in the reader's view.
        assert int(await shared_redis.hget(key, "state") or 0) == FAILED
    finally:
        await here.close()
        await there.close()


async def test_a_running_task_keeps_its_lease_and_finishes(shared_redis: aioredis.Redis, key_prefix: str) -> None:
    here = TaskStore(10, redis=shared_redis, prefix=key_prefix, lease_s=0.6)
    there = TaskStore(10, redis=shared_redis, prefix=key_prefix, lease_s=0.6)
    try:
        gate, work = gated()
        submitted = await here.submit("alice", work)
        await asyncio.sleep(2.0)  # several leases long: only renewals keep it alive
        assert (await there.get("alice", submitted.task_id)).state == RUNNING
        gate.set()
        final = [t async for t in there.watch("alice", submitted.task_id, 10.0)][-1]
        assert final.state == SUCCEEDED and final.result == ANSWER
    finally:
        await here.close()
        await there.close()


async def test_an_owner_cut_off_past_its_lease_stops_and_takes_the_failed_end(
    redis_url: str, shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    host, port = (
        shared_redis.connection_pool.connection_kwargs["host"],
        shared_redis.connection_pool.connection_kwargs["port"],
    )
    proxy = TcpProxy(host, port)
    await proxy.start()
    owner_redis = connect_redis(f"redis://127.0.0.1:{proxy.port}/0")
    assert owner_redis is not None
    here = TaskStore(10, redis=owner_redis, prefix=key_prefix, lease_s=0.6, backoff_s=0.1)
    there = TaskStore(10, redis=shared_redis, prefix=key_prefix, lease_s=0.6)
    stopped = asyncio.Event()

    async def work() -> chat_pb2.ChatResponse:
        try:
            await asyncio.Event().wait()  # never finishes by itself
        except asyncio.CancelledError:
            stopped.set()
            raise
        return ANSWER

    try:
        submitted = await here.submit("alice", work)
        proxy.cut()
        # The other replica finds the lease run out and fails the task for everyone.
        final = [t async for t in there.watch("alice", submitted.task_id, 20.0)][-1]
        assert (final.state, final.error) == (FAILED, LEASE_EXPIRED)
        proxy.restore()
        # The owner's next renewal finds the task ended: its work is stopped and it says the same.
        await asyncio.wait_for(stopped.wait(), 20.0)
        mine = [t async for t in here.watch("alice", submitted.task_id, 20.0)][-1]
        assert (mine.state, mine.error) == (FAILED, LEASE_EXPIRED)
        assert (await there.get("alice", submitted.task_id)).error == LEASE_EXPIRED
    finally:
        await here.close()
        await there.close()
        await owner_redis.aclose()
        await proxy.close()


async def test_a_task_submitted_just_after_a_redis_blip_is_found_on_the_other_replica(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    kwargs = shared_redis.connection_pool.connection_kwargs
    proxy = TcpProxy(kwargs["host"], kwargs["port"])
    await proxy.start()
    blipped_redis = connect_redis(f"redis://127.0.0.1:{proxy.port}/0")
    assert blipped_redis is not None
    here = TaskStore(10, redis=blipped_redis, prefix=key_prefix, backoff_s=60)
    there = TaskStore(10, redis=shared_redis, prefix=key_prefix)
    try:
        proxy.cut()
        with pytest.raises(NotFound):  # Redis could not say: this replica now leaves it alone a while
            await here.get("alice", "2" * 32)
        assert not here.backoff.ready()
        proxy.restore()
        gate, work = gated()
        submitted = await here.submit("alice", work)
        # Written before submit returned, back-off or not: the other replica finds it at once.
        assert (await there.get("alice", submitted.task_id)).state in ACTIVE
        gate.set()
    finally:
        await here.close()
        await there.close()
        await blipped_redis.aclose()
        await proxy.close()


@pytest.fixture
async def replicas(
    storage_service: ServiceProcess,
    embedding_service: ServiceProcess,
    llm_relay: Relay,
    test_agents_file: Path,
    redis_url: str,
    key_prefix: str,
) -> AsyncIterator[list[tuple[ServiceProcess, chat_pb2_grpc.ChatServiceAsyncStub]]]:
    """Two chat processes sharing Redis, with a short task lease."""
    env = chat_env(
        storage_service,
        embedding_service,
        llm_relay.base_url,
        CHAT_AGENTS_FILE=str(test_agents_file),
        REDIS_URL=redis_url,
        CHAT_REDIS_PREFIX=key_prefix,
        LLM_TIMEOUT_S=str(LLM_TIMEOUT_S),
        CHAT_TASK_LEASE_S=str(LEASE_S),
    )
    services = await asyncio.gather(*(asyncio.to_thread(spawn_service, "chat", env) for _ in range(2)))
    channels, stubs = zip(*(chat_stub(s.address) for s in services), strict=True)
    try:
        yield list(zip(services, stubs, strict=True))
    finally:
        for channel in channels:
            await channel.close(None)
        for service in services:
            service.stop()


async def test_a_task_of_a_chat_killed_mid_answer_ends_failed_on_the_other_replica(
    replicas: list[tuple[ServiceProcess, chat_pb2_grpc.ChatServiceAsyncStub]],
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
) -> None:
    (doomed, first), (_, second) = replicas
    user = await new_user(storage)
    await upload_ready(storage, user, "heaps.md", NOTES)
    submitted = await first.SubmitChatTask(
        chat_pb2.ChatRequest(agent_id="long", message="What does a binary heap keep at the root?"),
        metadata=user_metadata(user),
        timeout=30,
    )
    ask = chat_pb2.GetChatTaskRequest(task_id=submitted.task_id)
    watch = second.WatchChatTask(ask, metadata=user_metadata(user), timeout=LLM_TIMEOUT_S / 4)

    async def next_state() -> chat_pb2.ChatTask:
        task = await watch.read()
        assert isinstance(task, chat_pb2.ChatTask), "the watch ended before the task ran"
        return task

    seen = [await next_state()]
    while seen[-1].state != RUNNING:  # the long answer is under way
        seen.append(await next_state())

    doomed.process.kill()  # SIGKILL: no chance to say that its tasks stopped
    doomed.process.wait(10)

    seen += [task async for task in watch]  # ends by itself once the task ended
    assert await watch.code() == grpc.StatusCode.OK
    assert (seen[-1].state, seen[-1].error) == (FAILED, LEASE_EXPIRED)
    polled = await second.GetChatTask(ask, metadata=user_metadata(user))
    assert (polled.state, polled.error) == (FAILED, LEASE_EXPIRED)


async def test_tasks_submitted_on_one_replica_are_found_on_the_other_at_once(
    replicas: list[tuple[ServiceProcess, chat_pb2_grpc.ChatServiceAsyncStub]],
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
) -> None:
    (_, first), (_, second) = replicas
    user = await new_user(storage)
    await upload_ready(storage, user, "heaps.md", NOTES)

    async def submit_then_poll(number: int) -> chat_pb2.ChatTask:
        submitted = await first.SubmitChatTask(
            chat_pb2.ChatRequest(agent_id="brief", message=f"What does a heap keep at the root? ({number})"),
            metadata=user_metadata(user),
            timeout=30,
        )
        return await second.GetChatTask(
            chat_pb2.GetChatTaskRequest(task_id=submitted.task_id), metadata=user_metadata(user), timeout=10
        )

    polled = await asyncio.gather(*(submit_then_poll(n) for n in range(16)))
    assert all(t.state in (*ACTIVE, SUCCEEDED) for t in polled), [t.error for t in polled]
