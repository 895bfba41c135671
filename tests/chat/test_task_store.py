"""The async-mode task store on its own, against the real Redis: two stores sharing Redis stand
for two chat replicas; a Redis client aimed at a closed port stands for Redis being down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from chat.tasks import GONE, Task, TaskStore
from studyassist.chat.v1 import chat_pb2
from studyassist.common.v1 import common_pb2
from studyassist.core.cache import connect_redis
from studyassist.core.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted

PENDING = chat_pb2.CHAT_TASK_STATE_PENDING
RUNNING = chat_pb2.CHAT_TASK_STATE_RUNNING
SUCCEEDED = chat_pb2.CHAT_TASK_STATE_SUCCEEDED
FAILED = chat_pb2.CHAT_TASK_STATE_FAILED
ANSWER = chat_pb2.ChatResponse(
    session_id="s1",
    answer="A binary heap keeps the smallest key at the root.",
    backend="extractive",
    citations=[common_pb2.Citation(file_id="f1", page=2, snippet="smallest key at the root")],
)


@pytest.fixture
async def shared_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect_redis(redis_url)
    assert client is not None
    yield client
    await client.aclose()


@pytest.fixture
async def dead_redis() -> AsyncIterator[aioredis.Redis]:
    client = connect_redis("redis://127.0.0.1:9/0")  # nothing listens on port 9
    assert client is not None
    yield client
    await client.aclose()


Work = Callable[[], Awaitable[chat_pb2.ChatResponse]]


def gated(answer: chat_pb2.ChatResponse = ANSWER) -> tuple[asyncio.Event, Work]:
    """Work that finishes (with ``answer``) only once the returned event is set."""
    gate = asyncio.Event()

    async def work() -> chat_pb2.ChatResponse:
        await gate.wait()
        return answer

    return gate, work


async def stores(*made: TaskStore) -> None:
    for store in made:
        await store.close()


async def test_a_task_run_by_one_replica_is_polled_and_watched_from_another(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    here = TaskStore(10, redis=shared_redis, prefix=key_prefix, ttl_s=120)
    there = TaskStore(10, redis=shared_redis, prefix=key_prefix, ttl_s=120)
    try:
        gate, work = gated()
        submitted = await here.submit("alice", work)
        assert submitted.state == PENDING and submitted.estimated_seconds == 5.0
        # Visible from the other replica as soon as submit returned.
        polled = await there.get("alice", submitted.task_id)
        assert polled.state in (PENDING, RUNNING) and polled.estimated_seconds == 5.0
        with pytest.raises(NotFound):
            await there.get("bob", submitted.task_id)
        with pytest.raises(NotFound):
            await anext(there.watch("bob", submitted.task_id, 5.0))
        # Kept under the prefix, with the TTL.
        assert 0 < await shared_redis.ttl(key_prefix + submitted.task_id) <= 120

        watch = there.watch("alice", submitted.task_id, 10.0)
        first = await anext(watch)
        assert first.state in (PENDING, RUNNING) and first.task_id == submitted.task_id
        gate.set()
        rest = [task async for task in watch]  # ends by itself after the terminal state
        states = [first.state] + [t.state for t in rest]
        assert states[-1] == SUCCEEDED and SUCCEEDED not in states[:-1]
        assert len(set(states)) == len(states)  # one message per change, no repeats
        assert rest[-1].result == ANSWER

        polled = await there.get("alice", submitted.task_id)
        assert polled.state == SUCCEEDED and polled.result == ANSWER
        assert (await here.get("alice", submitted.task_id)).message() == polled.message()
    finally:
        await stores(here, there)


async def test_a_failure_and_its_reason_reach_the_other_replica(shared_redis: aioredis.Redis, key_prefix: str) -> None:
    here = TaskStore(10, redis=shared_redis, prefix=key_prefix)
    there = TaskStore(10, redis=shared_redis, prefix=key_prefix)

    async def refused() -> chat_pb2.ChatResponse:
        raise InvalidArgument("unknown agent 'nobody'")

    async def broken() -> chat_pb2.ChatResponse:
        raise RuntimeError("a bug")

    try:
        first = await here.submit("alice", refused)
        second = await here.submit("alice", broken)
        outcomes = [[t async for t in there.watch("alice", task.task_id, 10.0)][-1] for task in (first, second)]
        assert [(t.state, t.error) for t in outcomes] == [
            (FAILED, "unknown agent 'nobody'"),
            (FAILED, "internal error"),  # no internals leak to the caller
        ]
    finally:
        await stores(here, there)


async def test_without_redis_a_task_lives_in_its_replica_and_its_watch_wakes_on_changes() -> None:
    here, there = TaskStore(10), TaskStore(10)
    try:
        gate, work = gated()
        submitted = await here.submit("alice", work)
        watch = here.watch("alice", submitted.task_id, 10.0)
        assert (await anext(watch)).state in (PENDING, RUNNING)
        gate.set()
        rest = [task async for task in watch]
        assert rest[-1].state == SUCCEEDED and rest[-1].result == ANSWER
        with pytest.raises(NotFound):
            await here.get("bob", submitted.task_id)
        with pytest.raises(NotFound):
            await there.get("alice", submitted.task_id)
        with pytest.raises(InvalidArgument):
            await here.get("alice", "")
    finally:
        await stores(here, there)


async def test_redis_down_falls_back_to_memory_without_errors(dead_redis: aioredis.Redis, key_prefix: str) -> None:
    here = TaskStore(10, redis=dead_redis, prefix=key_prefix, backoff_s=0.2)
    there = TaskStore(10, redis=dead_redis, prefix=key_prefix, backoff_s=0.2)
    try:
        gate, work = gated()
        submitted = await here.submit("alice", work)
        gate.set()
        final = [t async for t in here.watch("alice", submitted.task_id, 10.0)][-1]
        assert final.state == SUCCEEDED and final.result == ANSWER
        assert (await here.get("alice", submitted.task_id)).state == SUCCEEDED
        assert here.backoff.errors > 0  # it did try Redis
        with pytest.raises(NotFound):  # the other replica cannot know it: NOT_FOUND, not an error
            await there.get("alice", submitted.task_id)
    finally:
        await stores(here, there)


async def test_running_tasks_are_bounded_and_finished_ones_stay_readable_from_redis(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    store = TaskStore(2, redis=shared_redis, prefix=key_prefix)
    try:
        gates = []
        tasks = []
        for _ in range(2):
            gate, work = gated()
            gates.append(gate)
            tasks.append(await store.submit("alice", work))
        _, work = gated()
        with pytest.raises(ResourceExhausted):
            await store.submit("alice", work)
        for gate in gates:
            gate.set()
        for task in tasks:
            assert [t async for t in store.watch("alice", task.task_id, 10.0)][-1].state == SUCCEEDED
        gate, work = gated()
        gate.set()
        third = await store.submit("alice", work)  # room again; the oldest finished task leaves memory
        assert tasks[0].task_id not in store._tasks
        assert (await store.get("alice", tasks[0].task_id)).result == ANSWER  # read back from Redis
        assert [t async for t in store.watch("alice", third.task_id, 10.0)][-1].state == SUCCEEDED
    finally:
        await store.close()


async def test_a_task_past_its_run_limit_fails(shared_redis: aioredis.Redis, key_prefix: str) -> None:
    store = TaskStore(10, redis=shared_redis, prefix=key_prefix, run_limit_s=0.3)
    try:
        _, work = gated()  # never released
        submitted = await store.submit("alice", work)
        final = [t async for t in store.watch("alice", submitted.task_id, 10.0)][-1]
        assert (final.state, final.error) == (FAILED, "the chat task ran out of time")
    finally:
        await store.close()


async def test_a_task_left_running_by_a_replica_that_went_away_reads_as_failed(
    shared_redis: aioredis.Redis, key_prefix: str
) -> None:
    # What a replica that died mid-task leaves behind: RUNNING, its run limit already past.
    orphan = Task("0" * 32, "alice", 5.0, time.time() - 1, RUNNING)
    await shared_redis.hset(key_prefix + orphan.task_id, mapping=orphan.fields())
    await shared_redis.expire(key_prefix + orphan.task_id, 60)
    store = TaskStore(10, redis=shared_redis, prefix=key_prefix)
    try:
        task = await store.get("alice", orphan.task_id)
        assert (task.state, task.error) == (FAILED, GONE)
        assert [t.state async for t in store.watch("alice", orphan.task_id, 5.0)] == [FAILED]
    finally:
        await store.close()


async def test_a_stopping_replica_marks_its_running_tasks_failed(shared_redis: aioredis.Redis, key_prefix: str) -> None:
    here = TaskStore(10, redis=shared_redis, prefix=key_prefix)
    there = TaskStore(10, redis=shared_redis, prefix=key_prefix)
    try:
        _, work = gated()
        submitted = await here.submit("alice", work)
        await here.close()
        task = await there.get("alice", submitted.task_id)
        assert task.state == FAILED and "stopped" in task.error
    finally:
        await stores(here, there)


async def test_a_watch_ends_at_its_deadline(shared_redis: aioredis.Redis, key_prefix: str) -> None:
    here = TaskStore(10, redis=shared_redis, prefix=key_prefix)
    there = TaskStore(10, redis=shared_redis, prefix=key_prefix)
    try:
        _, work = gated()
        submitted = await here.submit("alice", work)
        for store in (here, there):  # watched in its own replica and from another one
            watch = store.watch("alice", submitted.task_id, 0.3)
            assert (await anext(watch)).state in (PENDING, RUNNING)
            with pytest.raises(DeadlineExceeded):
                await asyncio.wait_for(anext(watch), 5.0)
    finally:
        await stores(here, there)
