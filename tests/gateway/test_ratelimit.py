"""Shared rate limits lease a few tokens per Redis round trip, and the shared limit still holds."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from gateway.ratelimit import RateLimiter, lease_size
from gateway.responses import HttpError
from studyassist.core.cache import connect_redis


def test_lease_size() -> None:
    assert [lease_size(n) for n in (1, 3, 119, 120, 300, 1200, 100_000)] == [1, 1, 1, 2, 5, 16, 16]


async def test_replicas_share_one_limit_with_fewer_round_trips(redis_url: str) -> None:
    redis = connect_redis(redis_url)
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
    allowed = 0
    for i in range(400):
        try:
            await replicas[i % 2].check_user("u1")
            allowed += 1
        except HttpError as exc:
            assert exc.status == 429 and int(exc.headers["Retry-After"]) >= 1
    # 300 in the bucket, a few more refilled meanwhile; a lease left unspent at the end is lost.
    assert 300 - 2 * lease_size(300) <= allowed <= 310
    assert calls <= allowed // 4 + 4  # one round trip per 5 allowed; a refusal is remembered until it ends
    await redis.aclose()


@pytest.mark.parametrize("per_minute", [3, 60])
async def test_small_limits_take_one_token_per_request(redis_url: str, per_minute: int) -> None:
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
