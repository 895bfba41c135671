"""Async mode: a submitted request runs in the background; the caller polls or watches its task.

The replica that accepts a task runs it and keeps it in memory: bounded (the oldest finished
tasks are dropped first, finished ones also after the TTL), and at most ``max_tasks`` may be
running in one replica at once (beyond that, RESOURCE_EXHAUSTED).

When Redis is configured, every change of a task (owner, state, estimate, error, the serialized
``ChatResponse``) is also written to one Redis hash, ``<prefix><task id>``, that expires after
the TTL. Replicas behind client-side round robin share it, so a poll or watch that lands on
another replica finds the task; a watch there re-reads the hash every ``poll_interval_s``.
Redis down or slow is never an error: writes are skipped, reads fall back to this replica's
memory (a warning is logged, and Redis is left alone for a short back-off, as the answer cache
does); only the replica that runs a task then knows it. The final state is written with a few
retries, so a short Redis outage does not leave other replicas seeing RUNNING.

Submitting writes the task to Redis before it returns (retried past the back-off, through a
client with a longer timeout than the caches'), so a poll that lands on another replica at once
finds it; only when Redis cannot take it after those tries does the task live in this replica only.

A replica that crashes (kill -9, OOM) cannot say that its tasks stopped, so each active task holds
a lease: the owner renews it (rewriting the hash) every third of ``lease_s`` while the task runs. A
reader (any replica) that finds an active task whose lease has run out marks it FAILED with
``LEASE_EXPIRED`` in Redis, in the same Lua script that read it, so every poller sees the same end;
the owner, should it be alive after all (cut off from Redis longer than the lease), finds the task
ended at its next write, stops the work and takes that state too. Lease times are Redis's own
clock (``TIME`` inside the scripts), so replicas' clocks need not agree. A task must also end
within ``run_limit_s`` (it is failed otherwise, and read as FAILED past that by any replica).

A task belongs to the user who submitted it: another user's task id is NOT_FOUND, as is an
unknown or expired one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError
from redis.typing import EncodableT, FieldT
from studyassist.chat.v1 import chat_pb2
from studyassist.core.cache import REDIS_ERRORS, RedisBackoff
from studyassist.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StudyAssistError,
)

log = logging.getLogger(__name__)

State = chat_pb2.ChatTaskState
ACTIVE = (State.CHAT_TASK_STATE_PENDING, State.CHAT_TASK_STATE_RUNNING)
TERMINAL = (State.CHAT_TASK_STATE_SUCCEEDED, State.CHAT_TASK_STATE_FAILED)
MAX_TASK_ID_CHARS = 64
# Attempts at writing a task's final state to Redis (a back-off apart), so a short outage heals.
FINAL_WRITE_ATTEMPTS = 3
# A watch of a task running in this replica is woken by its changes; this only bounds each wait.
LOCAL_WAIT_S = 5.0
GONE = "the chat service replica running this task stopped before it finished"
LEASE_EXPIRED = (
    "the chat service replica running this task stopped answering before it finished (it no longer "
    "renewed the task's lease); ask again"
)
# Attempts at the first write, before submit returns (so another replica can find the task at once).
SUBMIT_WRITE_ATTEMPTS = 3
STATES_ACTIVE_LUA = "{" + ",".join(str(int(s)) for s in ACTIVE) + "}"
# KEYS[1]: the task's hash. ARGV: TTL seconds, lease seconds, then field, value pairs.
# Writes the task unless Redis already holds it ended (then 0: the owner takes that state), and
# sets its lease to end lease seconds from now on Redis's clock.
PUT_LUA = f"""
local active = {{}}
for _, s in ipairs({STATES_ACTIVE_LUA}) do active[tostring(s)] = true end
local state = redis.call('HGET', KEYS[1], 'state')
if state and not active[state] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], 'lease_until', tostring(now + tonumber(ARGV[2])), unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS[1]: the task's hash. ARGV[1]: the failed state, ARGV[2]: the reason.
# The task's fields; an active one whose lease ran out is failed first, once, for every reader.
READ_LUA = f"""
local active = {{}}
for _, s in ipairs({STATES_ACTIVE_LUA}) do active[tostring(s)] = true end
local state = redis.call('HGET', KEYS[1], 'state')
local lease = redis.call('HGET', KEYS[1], 'lease_until')
if state and active[state] and lease then
  local t = redis.call('TIME')
  if tonumber(t[1]) + tonumber(t[2]) / 1000000 > tonumber(lease) then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'error', ARGV[2])
  end
end
return redis.call('HGETALL', KEYS[1])
"""


@dataclass(slots=True)
class Task:
    task_id: str
    user_id: str
    estimated_seconds: float
    # Wall-clock time (epoch seconds) by which the task has ended, one way or the other.
    run_until: float
    state: chat_pb2.ChatTaskState = State.CHAT_TASK_STATE_PENDING
    result: chat_pb2.ChatResponse | None = None
    error: str = ""
    # Set only in the replica that runs the task.
    runner: asyncio.Task[None] | None = field(default=None, repr=False)
    finished_at: float = 0.0  # time.monotonic(), in the replica that ran it
    # Set (and replaced) on every change, so a watch in this replica wakes at once.
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def message(self) -> chat_pb2.ChatTask:
        task = chat_pb2.ChatTask(
            task_id=self.task_id, state=self.state, estimated_seconds=self.estimated_seconds, error=self.error
        )
        if self.result is not None:
            task.result.CopyFrom(self.result)
        return task

    def _notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def fields(self) -> dict[FieldT, EncodableT]:
        """The task as a Redis hash."""
        return {
            "user": self.user_id,
            "state": int(self.state),
            "estimate": repr(self.estimated_seconds),
            "run_until": repr(self.run_until),
            "error": self.error,
            "result": self.result.SerializeToString() if self.result is not None else b"",
        }

    @classmethod
    def from_fields(cls, task_id: str, fields: Mapping[bytes | str, bytes | str]) -> Task | None:
        """A task read back from its Redis hash; None when it is not one (missing or malformed)."""
        raw = {_as_bytes(k): _as_bytes(v) for k, v in fields.items()}
        try:
            state = int(raw[b"state"])
            if state not in State.values():
                raise ValueError(f"unknown state {state}")
            task = cls(
                task_id,
                raw[b"user"].decode(),
                float(raw[b"estimate"]),
                float(raw[b"run_until"]),
                cast(chat_pb2.ChatTaskState, state),
                error=raw.get(b"error", b"").decode(),
            )
            if result := raw.get(b"result", b""):
                task.result = chat_pb2.ChatResponse.FromString(result)
        except (KeyError, ValueError, UnicodeDecodeError, DecodeError) as exc:
            log.warning("unreadable chat task in redis", extra={"fields": {"task_id": task_id, "error": str(exc)}})
            return None
        return task


def _honour_cancellation() -> None:
    """Raise CancelledError when this task was cancelled during a Redis call that swallowed it.

    redis-py bounds each socket operation with ``asyncio.wait_for``, which on Python 3.11 drops a
    cancellation that arrives as the operation completes; the task's ``cancelling()`` count still
    says it was asked to stop (a stopping service, a caller that went away from a watch).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _as_bytes(value: bytes | str) -> bytes:
    # The client is created without decode_responses, so Redis hands back bytes.
    return value if isinstance(value, bytes) else value.encode()


class Put(enum.Enum):
    """What became of a write of a task to Redis."""

    WRITTEN = "written"
    # Redis already holds the task ended (a reader found its lease run out): the owner takes that state.
    ENDED = "ended"
    UNREACHABLE = "unreachable"


class TaskStore:
    def __init__(
        self,
        max_tasks: int,
        *,
        redis: aioredis.Redis | None = None,
        prefix: str = "chat:task:",
        ttl_s: float = 3600.0,
        run_limit_s: float = 300.0,
        lease_s: float = 10.0,
        poll_interval_s: float = 0.2,
        initial_estimate_s: float = 5.0,
        backoff_s: float = 5.0,
    ) -> None:
        self.max_tasks = max_tasks
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.run_limit_s = run_limit_s
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.backoff = RedisBackoff("chat tasks kept in this replica only", backoff_s)
        self._put_script = redis.register_script(PUT_LUA) if redis is not None else None
        self._read_script = redis.register_script(READ_LUA) if redis is not None else None
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._running = 0
        # Exponentially weighted mean of recent answer durations: the estimate for the next one.
        self._mean_seconds = initial_estimate_s

    @property
    def backend(self) -> str:
        return "redis" if self.redis is not None else "memory"

    # --- Redis, best effort -------------------------------------------------------------------

    def _redis_usable(self) -> bool:
        return self.redis is not None and self.backoff.ready()

    async def _put(self, task: Task, *, retry: bool = False) -> Put:
        """Store the whole task in its hash (with the TTL, its lease renewed) unless Redis has it ended.

        ``retry`` tries Redis even inside the back-off (a write that must not be skipped)."""
        if self._put_script is None or (not retry and not self._redis_usable()):
            return Put.UNREACHABLE
        args: list[EncodableT] = [max(1, round(self.ttl_s)), repr(self.lease_s)]
        for name, value in task.fields().items():
            args += [name, value]
        try:
            written = await self._put_script(keys=[self.prefix + task.task_id], args=args)
        except REDIS_ERRORS as exc:
            self.backoff.failed(exc)
            return Put.UNREACHABLE
        finally:
            _honour_cancellation()
        return Put.WRITTEN if written else Put.ENDED

    async def _read(self, task_id: str) -> Task | None:
        """The task from Redis (failed there first when its lease ran out); None when it is not
        there or Redis cannot say."""
        if self._read_script is None or not self._redis_usable():
            return None
        try:
            flat = await self._read_script(
                keys=[self.prefix + task_id], args=[int(State.CHAT_TASK_STATE_FAILED), LEASE_EXPIRED]
            )
        except REDIS_ERRORS as exc:
            self.backoff.failed(exc)
            return None
        finally:
            _honour_cancellation()
        if not flat:
            return None
        task = Task.from_fields(task_id, dict(zip(flat[::2], flat[1::2], strict=True)))
        if task is not None:
            self._expire_stale(task)
        return task

    def _expire_stale(self, task: Task) -> None:
        # Read from another replica's writes: past its run limit it is not running anywhere.
        if not task.done and time.time() > task.run_until:
            task.state, task.error = State.CHAT_TASK_STATE_FAILED, GONE

    async def _adopt(self, task: Task) -> None:
        """Take the end that Redis holds for a task this replica runs (a reader failed it)."""
        stored = await self._read(task.task_id)
        if stored is not None and stored.done:
            task.state, task.error, task.result = stored.state, stored.error, stored.result
        else:
            task.state, task.error, task.result = State.CHAT_TASK_STATE_FAILED, LEASE_EXPIRED, None
        task._notify()

    async def _keep_lease(self, task: Task) -> None:
        """Renew the task's lease while it runs; returns only when Redis has it ended meanwhile."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            # Past the back-off too: a lease skipped for long enough would end a task that runs.
            if await self._put(task, retry=True) is Put.ENDED:
                await self._adopt(task)
                log.warning("chat task lease lost", extra={"fields": {"task_id": task.task_id}})
                return

    # --- tasks --------------------------------------------------------------------------------

    def _local(self, task_id: str) -> Task | None:
        task = self._tasks.get(task_id)
        # finished_at, not done: a task shows its end while its last write to Redis is under way,
        # and is finished here (its TTL counting) only once that is over.
        if task is not None and task.finished_at and time.monotonic() - task.finished_at > self.ttl_s:
            del self._tasks[task_id]
            return None
        return task

    def _make_room(self) -> None:
        while len(self._tasks) >= self.max_tasks:
            oldest = next((k for k, t in self._tasks.items() if t.finished_at), None)
            if oldest is None:
                return
            del self._tasks[oldest]

    async def submit(self, user_id: str, work: Callable[[], Awaitable[chat_pb2.ChatResponse]]) -> chat_pb2.ChatTask:
        """Start ``work`` as a task of ``user_id``; returns once the task can be read from any replica."""
        if self._running >= self.max_tasks:
            raise ResourceExhausted("too many chat tasks are running; try again shortly")
        self._make_room()
        task = Task(uuid.uuid4().hex, user_id, round(self._mean_seconds, 2), time.time() + self.run_limit_s)
        self._tasks[task.task_id] = task
        self._running += 1
        submitted = task.message()
        stored = asyncio.Event()
        task.runner = asyncio.create_task(self._run(task, work, stored), name=f"chat-task-{task.task_id}")
        # The runner writes the task first; a caller that goes away now leaves the task running.
        await stored.wait()
        return submitted

    async def _store_submitted(self, task: Task) -> None:
        # Past the back-off, and a few times while Redis looked well: a poll on another replica right
        # after submit must find the task. One try only while Redis is known to be down.
        attempts = SUBMIT_WRITE_ATTEMPTS if self._redis_usable() else 1
        for attempt in range(attempts):
            if self.redis is None or await self._put(task, retry=True) is not Put.UNREACHABLE:
                return
            if attempt + 1 < attempts:
                await asyncio.sleep(0.05 * (attempt + 1))
        log.warning("chat task kept in this replica only", extra={"fields": {"task_id": task.task_id}})

    async def _run(
        self, task: Task, work: Callable[[], Awaitable[chat_pb2.ChatResponse]], stored: asyncio.Event
    ) -> None:
        # Writes happen here (and in the lease keeper, whose writes Redis refuses once the task
        # ended), so Redis never sees an older state after a newer one.
        started = time.perf_counter()
        finished = False
        try:
            try:
                await self._store_submitted(task)
            finally:
                stored.set()
            task.state = State.CHAT_TASK_STATE_RUNNING
            task._notify()
            if await self._put(task) is Put.ENDED:
                await self._adopt(task)
            else:
                await self._work(task, work)
            put = await self._put(task)
            if put is Put.ENDED:
                await self._adopt(task)
            self._finished(task, started)
            finished = True
        except asyncio.CancelledError:
            # The service is stopping: say so to whoever polls another replica, then stop.
            if not finished:
                task.error, task.result = "the chat service stopped before the answer was ready", None
                task.state = State.CHAT_TASK_STATE_FAILED
                self._finished(task, started)
                await self._put(task, retry=True)
            raise
        if put is Put.UNREACHABLE and self.redis is not None:
            # A short outage should not leave other replicas seeing RUNNING until the lease ends.
            for attempt in range(1, FINAL_WRITE_ATTEMPTS):
                await asyncio.sleep(self.backoff.backoff_s * attempt / FINAL_WRITE_ATTEMPTS)
                put = await self._put(task, retry=True)
                if put is Put.ENDED:
                    await self._adopt(task)
                if put is not Put.UNREACHABLE:
                    return
            log.warning("chat task result not shared through redis", extra={"fields": {"task_id": task.task_id}})

    async def _work(self, task: Task, work: Callable[[], Awaitable[chat_pb2.ChatResponse]]) -> None:
        """Run ``work`` within the run limit, renewing the lease meanwhile; set the task's outcome."""
        doing: asyncio.Future[chat_pb2.ChatResponse] = asyncio.ensure_future(work())
        keeper = asyncio.create_task(self._keep_lease(task)) if self.redis is not None else None
        try:
            done, _ = await asyncio.wait(
                {doing} | ({keeper} if keeper is not None else set()),
                timeout=max(0.0, task.run_until - time.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if keeper is not None:
                keeper.cancel()
            doing.cancel()  # nothing when it finished; else its cancellation stops the LLM call too
        if doing in done and not doing.cancelled():
            exc = doing.exception()
            if exc is None:
                task.result, task.state = doing.result(), State.CHAT_TASK_STATE_SUCCEEDED
            elif isinstance(exc, StudyAssistError):
                task.error, task.state = exc.message, State.CHAT_TASK_STATE_FAILED
            else:
                log.error("chat task failed", exc_info=exc)
                task.error, task.state = "internal error", State.CHAT_TASK_STATE_FAILED
        elif keeper is not None and keeper in done:
            pass  # the lease was lost: the keeper took the task's end from Redis
        else:
            task.error, task.state = "the chat task ran out of time", State.CHAT_TASK_STATE_FAILED
        await asyncio.wait({doing})  # let a cancelled answer clean up before the end is written

    def _finished(self, task: Task, started: float) -> None:
        self._running -= 1
        task.finished_at = time.monotonic()
        task._notify()
        elapsed = time.perf_counter() - started
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * elapsed

    async def get(self, user_id: str, task_id: str) -> Task:
        """The task as it is now, from this replica's memory or else from Redis."""
        if not task_id or len(task_id) > MAX_TASK_ID_CHARS:
            raise InvalidArgument(f"task_id is required (at most {MAX_TASK_ID_CHARS} characters)")
        task = self._local(task_id) or await self._read(task_id)
        if task is None or task.user_id != user_id:
            raise NotFound(f"no chat task {task_id!r}")
        return task

    async def watch(
        self, user_id: str, task_id: str, deadline_s: float | None = None
    ) -> AsyncIterator[chat_pb2.ChatTask]:
        """The task now, then on every change of state; ends after a terminal state.

        A task run here wakes the watch at once; one run by another replica is re-read from
        Redis every ``poll_interval_s``. ``deadline_s`` (the call's remaining time) bounds it.
        """
        deadline_at = None if deadline_s is None else time.monotonic() + deadline_s
        task = await self.get(user_id, task_id)
        last: tuple[int, str] | None = None
        while True:
            changed = task.changed
            if (task.state, task.error) != last:
                last = (task.state, task.error)
                yield task.message()
            if task.done:
                return
            wait = LOCAL_WAIT_S if task.runner is not None else self.poll_interval_s
            if deadline_at is not None:
                left = deadline_at - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded("the watch ran out of time before the task ended")
                wait = min(wait, left)
            if task.runner is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):  # not wait_for: on 3.11 it can swallow a cancellation
                        await changed.wait()
                continue
            await asyncio.sleep(wait)
            if self._redis_usable():
                fresh = await self._read(task_id)
                if fresh is None and self._redis_usable():
                    raise NotFound(f"no chat task {task_id!r}")  # expired while watched
                task = fresh or task
            else:
                self._expire_stale(task)

    async def close(self) -> None:
        """Cancel the tasks still running (each records that it was stopped) and wait for them briefly."""
        runners = [t.runner for t in self._tasks.values() if t.runner is not None and not t.runner.done()]
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.wait(runners, timeout=2.0)
