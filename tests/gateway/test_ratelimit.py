"""Shared rate limits: a moving window in Redis admits exactly the limit, however the requests
interleave across replicas, and a refusal is remembered until a place frees up."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from gateway.ratelimit import RateLimiter
from gateway.responses import HttpError
from studyassist.core.cache import connect_redis


async def admitted(limiter: RateLimiter, user: str) -> bool:
    try:
        await limiter.check_user(user)
    except HttpError as exc:
        assert exc.status == 429 and int(exc.headers["Retry-After"]) >= 1
        return False
    return True


async def test_replicas_share_one_exact_limit_under_concurrency(redis_url: str) -> None:
    redis = connect_redis(redis_url, timeout_s=5.0)
    assert redis is not None
    prefix = f"test:rl:{uuid.uuid4().hex}:"
    replicas = [RateLimiter(300, 0, redis, prefix=prefix) for _ in range(2)]
    calls = 0
    for limiter in replicas:
        script = limiter._script

        async def counted(*args: Any, script: Any = script, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await script(*args, **kwargs)

        limiter._script = counted
    try:
        # 600 checks, 16 at a time, interleaved over both replicas: exactly the 300 of the window pass.
        at_once = asyncio.Semaphore(16)

        async def check(i: int) -> bool:
            async with at_once:
                return await admitted(replicas[i % 2], "u1")

        outcomes = await asyncio.gather(*(check(i) for i in range(600)))
        assert sum(outcomes) == 300
        # Full: each replica remembers the refusal until a place frees up, without asking Redis.
        before = calls
        assert not any([await admitted(replicas[i % 2], "u1") for i in range(50)])
        assert calls - before <= 2
        # Another user has a window of their own.
        assert await admitted(replicas[0], "u2")
    finally:
        await redis.aclose()


@pytest.mark.parametrize("per_minute", [3, 60])
async def test_small_limits_admit_exactly_their_number(redis_url: str, per_minute: int) -> None:
    redis = connect_redis(redis_url)
    assert redis is not None
    limiter = RateLimiter(per_minute, 0, redis, prefix=f"test:rl:{uuid.uuid4().hex}:")
    codes = []
    for _ in range(per_minute + 1):
        try:
            await limiter.check_user("u1")
            codes.append(200)
        except HttpError as exc:
            codes.append(exc.status)
    assert codes == [200] * per_minute + [429]
    await redis.aclose()


async def test_without_redis_each_replica_keeps_local_buckets() -> None:
    limiter = RateLimiter(5, 0, None)
    assert limiter.backend == "local"
    assert [await admitted(limiter, "u1") for _ in range(6)] == [True] * 5 + [False]
