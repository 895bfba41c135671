"""Password hashing is bounded: a burst of sign-ins gets 429 rather than every core."""

from __future__ import annotations

import asyncio
import threading

import pytest
from argon2 import PasswordHasher
from gateway.auth import PasswordWork
from gateway.responses import HttpError


async def test_hashes_run_a_few_at_a_time_and_excess_is_refused_at_once() -> None:
    work = PasswordWork(PasswordHasher(), concurrency=2, max_waiting=3)
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def slow() -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1
        return "done"

    queued = [asyncio.ensure_future(work.run(slow)) for _ in range(3)]
    await asyncio.sleep(0.2)
    with pytest.raises(HttpError) as refused:
        await work.run(slow)
    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"]
    release.set()
    assert await asyncio.gather(*queued) == ["done"] * 3
    assert most == 2
    # Capacity comes back once the queue drains.
    assert PasswordHasher().verify(await work.hash("mat-khau-dai-1"), "mat-khau-dai-1")


async def test_retry_after_is_when_the_queue_ahead_is_worked_off() -> None:
    work = PasswordWork(PasswordHasher(), concurrency=2, max_waiting=40)
    release = threading.Event()
    work.seconds_per_hash = 0.5
    queued = [asyncio.ensure_future(work.run(lambda: release.wait(10))) for _ in range(40)]
    await asyncio.sleep(0.2)
    with pytest.raises(HttpError) as refused:
        await work.run(lambda: True)
    # 40 hashes ahead, two at a time, half a second each: back in 10 s, not in a fixed 2.
    assert refused.value.headers["Retry-After"] == "10"
    release.set()
    await asyncio.gather(*queued)
    # The estimate follows the measured hashes (each far shorter than 0.5 s once released).
    assert work.seconds_per_hash < 0.5
    assert work.retry_after_s() == 1
