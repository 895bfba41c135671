"""Async mode: a submitted request runs in the background; the caller polls its task.

Tasks live in this process's memory (bounded; the oldest finished ones are dropped first) and
belong to the user who submitted them: another user's task id is NOT_FOUND. A task survives
neither a restart nor a hop to another replica: route polls with session affinity.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from studyassist.chat.v1 import chat_pb2
from studyassist.core.errors import InvalidArgument, NotFound, ResourceExhausted, StudyAssistError

log = logging.getLogger(__name__)

State = chat_pb2.ChatTaskState


@dataclass(slots=True)
class Task:
    task_id: str
    user_id: str
    estimated_seconds: float
    state: chat_pb2.ChatTaskState = State.CHAT_TASK_STATE_PENDING
    result: chat_pb2.ChatResponse | None = None
    error: str = ""
    runner: asyncio.Task[None] | None = field(default=None, repr=False)

    def message(self) -> chat_pb2.ChatTask:
        task = chat_pb2.ChatTask(
            task_id=self.task_id, state=self.state, estimated_seconds=self.estimated_seconds, error=self.error
        )
        if self.result is not None:
            task.result.CopyFrom(self.result)
        return task


class TaskStore:
    def __init__(self, max_tasks: int, initial_estimate_s: float = 5.0) -> None:
        self.max_tasks = max_tasks
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        # Exponentially weighted mean of recent answer durations: the estimate for the next one.
        self._mean_seconds = initial_estimate_s

    def _running(self) -> int:
        return sum(
            1 for t in self._tasks.values() if t.state in (State.CHAT_TASK_STATE_PENDING, State.CHAT_TASK_STATE_RUNNING)
        )

    def submit(self, user_id: str, work: Callable[[], Awaitable[chat_pb2.ChatResponse]]) -> Task:
        if self._running() >= self.max_tasks:
            raise ResourceExhausted("too many chat tasks are running; try again shortly")
        while len(self._tasks) >= self.max_tasks:
            oldest = next(
                (
                    k
                    for k, t in self._tasks.items()
                    if t.state in (State.CHAT_TASK_STATE_SUCCEEDED, State.CHAT_TASK_STATE_FAILED)
                ),
                None,
            )
            if oldest is None:
                break
            del self._tasks[oldest]
        task = Task(uuid.uuid4().hex, user_id, round(self._mean_seconds, 2))
        self._tasks[task.task_id] = task
        task.runner = asyncio.create_task(self._run(task, work), name=f"chat-task-{task.task_id}")
        return task

    async def _run(self, task: Task, work: Callable[[], Awaitable[chat_pb2.ChatResponse]]) -> None:
        task.state = State.CHAT_TASK_STATE_RUNNING
        started = time.perf_counter()
        try:
            task.result = await work()
            task.state = State.CHAT_TASK_STATE_SUCCEEDED
        except StudyAssistError as exc:
            task.error, task.state = exc.message, State.CHAT_TASK_STATE_FAILED
        except Exception:
            log.exception("chat task failed")
            task.error, task.state = "internal error", State.CHAT_TASK_STATE_FAILED
        elapsed = time.perf_counter() - started
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * elapsed

    def get(self, user_id: str, task_id: str) -> Task:
        if not task_id or len(task_id) > 64:
            raise InvalidArgument("task_id is required (at most 64 characters)")
        task = self._tasks.get(task_id)
        if task is None or task.user_id != user_id:
            raise NotFound(f"no chat task {task_id!r}")
        return task

    async def close(self) -> None:
        for task in self._tasks.values():
            if task.runner is not None and not task.runner.done():
                task.runner.cancel()
