"""Dynamic batching: texts from many callers are merged into few forward passes.

One asyncio task owns the queue. It takes what is waiting, waits at most ``max_wait_s`` for more
while the batch is under its token budget, drops texts whose caller has gone, sorts the rest by
length and cuts them into forward passes whose padded size (texts x longest) stays within the
budget, so short texts are not padded to the length of long ones. The model runs on one worker
thread, off the event loop; while it runs, new texts queue up and form the next batch.
A full queue refuses a request at once (RESOURCE_EXHAUSTED) instead of letting latency grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from studyassist.core.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]
EmbedFn = Callable[[list[list[int]]], npt.NDArray[np.float32]]

# Throughput is reported over this trailing window.
THROUGHPUT_WINDOW_S = 10.0
# After this long without work, memory freed by the last batches is handed back to the OS.
IDLE_RELEASE_S = 1.0


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps them after large activation buffers are freed)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass(slots=True)
class _Pending:
    ids: list[int]
    future: asyncio.Future[Vector]


@dataclass(slots=True)
class BatcherStats:
    batches: int = 0
    texts_embedded: int = 0
    rejected_overload: int = 0
    dropped_cancelled: int = 0
    started: float = field(default_factory=time.monotonic)
    _recent: deque[tuple[float, int]] = field(default_factory=deque)

    @property
    def mean_batch_size(self) -> float:
        return self.texts_embedded / self.batches if self.batches else 0.0

    def record_batch(self, size: int) -> None:
        now = time.monotonic()
        self.batches += 1
        self.texts_embedded += size
        self._recent.append((now, size))
        while self._recent and self._recent[0][0] < now - THROUGHPUT_WINDOW_S:
            self._recent.popleft()

    def texts_per_second(self) -> float:
        now = time.monotonic()
        recent = sum(n for t, n in self._recent if t >= now - THROUGHPUT_WINDOW_S)
        span = min(THROUGHPUT_WINDOW_S, now - self.started)
        return recent / span if span > 0 else 0.0


def cut_by_padded_tokens(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped into batches, shortest first, each within ``budget`` padded tokens."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted ascending, so this text is the longest of the batch if it joins.
        if current and (len(current) + 1) * lengths[index] > budget:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class Batcher:
    def __init__(
        self,
        embed: EmbedFn,
        *,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        meter: metrics.Meter | None = None,
    ) -> None:
        self._embed = embed
        self._max_batch_tokens = max_batch_tokens
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding-inference")
        self._task: asyncio.Task[None] | None = None
        self._worked_since_release = False
        self.stats = BatcherStats()
        meter = meter or metrics.NoOpMeter("embedding.batcher")
        self._batch_size = meter.create_histogram("embedding.batch.size", unit="{text}", description="Texts per pass")
        self._texts = meter.create_counter("embedding.texts", unit="{text}", description="Texts embedded")
        self._rejected = meter.create_counter("embedding.rejected", unit="{request}", description="Full-queue refusals")
        self._dropped = meter.create_counter("embedding.dropped", unit="{text}", description="Texts of gone callers")
        meter.create_observable_gauge("embedding.queue.depth", [self._observe_depth], unit="{text}")
        meter.create_observable_gauge("embedding.texts_per_second", [self._observe_rate], unit="{text}/s")

    def _observe_depth(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(len(self._queue))

    def _observe_rate(self, _: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.stats.texts_per_second())

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="embedding-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(Unavailable("the embedding service is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def embed(self, token_ids: list[list[int]]) -> list[Vector]:
        """Vectors for pre-tokenised texts, in order. Cancelling the caller drops its queued texts."""
        if not token_ids:
            return []
        if self._task is None:
            raise Unavailable("the embedding batcher is not running")
        if len(self._queue) + len(token_ids) > self._max_queue:
            self._drop_gone_callers()
        if len(self._queue) + len(token_ids) > self._max_queue:
            self.stats.rejected_overload += 1
            self._rejected.add(1)
            raise ResourceExhausted(
                f"embedding queue is full ({len(self._queue)} texts waiting, limit {self._max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Vector]] = []
        for ids in token_ids:
            future: asyncio.Future[Vector] = loop.create_future()
            self._queue.append(_Pending(ids, future))
            futures.append(future)
        self._arrived.set()
        # If this caller is cancelled, gather cancels every future; the batcher then skips them.
        return list(await asyncio.gather(*futures))

    def _drop_gone_callers(self) -> None:
        """Forget queued texts whose caller has left, so they do not count against the queue limit."""
        live = deque(pending for pending in self._queue if not pending.future.done())
        self._count_dropped(len(self._queue) - len(live))
        self._queue = live

    async def _next_batch(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._arrived.clear()
            if not self._worked_since_release:
                await self._arrived.wait()
                continue
            try:
                await asyncio.wait_for(self._arrived.wait(), IDLE_RELEASE_S)
            except TimeoutError:
                self._worked_since_release = False
                await loop.run_in_executor(self._executor, release_free_memory)
        deadline = loop.time() + self._max_wait_s
        taken: list[_Pending] = []
        tokens = 0
        while tokens < self._max_batch_tokens:
            if self._queue:
                pending = self._queue.popleft()
                if pending.future.done():  # the caller went away while its texts waited
                    self._count_dropped(1)
                    continue
                taken.append(pending)
                tokens += len(pending.ids)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return taken

    def _count_dropped(self, count: int) -> None:
        if count:
            self.stats.dropped_cancelled += count
            self._dropped.add(count)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            taken = await self._next_batch()
            if not taken:
                continue
            for indices in cut_by_padded_tokens([len(p.ids) for p in taken], self._max_batch_tokens):
                batch = [taken[i] for i in indices if not taken[i].future.done()]
                self._count_dropped(len(indices) - len(batch))
                if not batch:
                    continue
                try:
                    vectors = await loop.run_in_executor(self._executor, self._embed, [p.ids for p in batch])
                except Exception as exc:
                    log.exception("embedding inference failed")
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(Unavailable(f"embedding inference failed: {exc}"))
                    continue
                self._worked_since_release = True
                self.stats.record_batch(len(batch))
                self._batch_size.record(len(batch))
                self._texts.add(len(batch))
                for pending, vector in zip(batch, vectors, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(vector)
