"""Rate limits per user and per client IP: at most N requests in any minute.

With Redis the limit is shared by every gateway replica and exact under concurrency: a moving
window, one sorted set per key holding the admission time of each request of the last minute, read
and written by one Lua script (atomic, on Redis's own clock), so no two replicas can both take the
last place. A refusal says when the oldest admission leaves the window (``Retry-After``); it is
remembered here until then, which is exact too (admissions only leave the window with time), so a
client hammering past its limit costs no round trips. Without Redis, or while Redis is failing,
each replica keeps local token buckets (a minute's worth, refilled continuously), so the limit is
per replica rather than missing. Over the limit: 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from itertools import count
from typing import Any

import grpc
from redis.asyncio import Redis
from studyassist.core.cache import REDIS_ERRORS, RedisBackoff

from gateway.responses import HttpError

WINDOW_S = 60
# KEYS[1]: the key's sorted set. ARGV: the limit, the window (microseconds), a member unique to this
# request. Returns {1, 0} when admitted, else {0, seconds until a place frees up}.
_MOVING_WINDOW_LUA = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, '0'}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tostring((tonumber(oldest[2]) + window - now) / 1000000)}
"""


class LocalBuckets:
    def __init__(self, max_keys: int = 100_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys

    def take(self, key: str, capacity: float, rate: float) -> float:
        """0 when a token was taken, else seconds until one is available."""
        now = time.monotonic()
        tokens, stamp = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - stamp) * rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / rate
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait


# Keys with a refusal remembered at once; beyond it all are forgotten (memory stays bounded).
MAX_REFUSED_KEYS = 100_000


class RateLimiter:
    def __init__(
        self, per_user_per_minute: int, per_ip_per_minute: int, redis: Redis | None, prefix: str = "gateway:rl:"
    ) -> None:
        self.per_user = per_user_per_minute
        self.per_ip = per_ip_per_minute
        self._redis = redis
        self._prefix = prefix
        self._script: Any = redis.register_script(_MOVING_WINDOW_LUA) if redis is not None else None
        self._local = LocalBuckets()
        self._backoff = RedisBackoff("rate limits fall back to local buckets")
        # key -> until when (monotonic) the shared window is full: no place frees up sooner.
        self._refused: dict[str, float] = {}
        # Members of the windows' sorted sets: this replica's random name and a running number.
        self._replica = os.urandom(6).hex()
        self._numbers = count()

    @property
    def backend(self) -> str:
        return "redis" if self._redis is not None else "local"

    async def _take(self, key: str, per_minute: int) -> float:
        """0 when the request is admitted, else seconds until it could be."""
        if self._script is not None and self._backoff.ready():
            now = time.monotonic()
            until = self._refused.get(key, 0.0)
            if until > now:
                return until - now
            member = f"{self._replica}:{next(self._numbers)}"
            try:
                admitted, retry = await self._script(
                    keys=[self._prefix + key], args=[per_minute, WINDOW_S * 1_000_000, member]
                )
            except REDIS_ERRORS as exc:
                self._backoff.failed(exc)
            else:
                if int(admitted):
                    return 0.0
                wait = max(float(retry), 0.001)
                if len(self._refused) >= MAX_REFUSED_KEYS:
                    self._refused.clear()
                self._refused[key] = time.monotonic() + wait
                return wait
        return self._local.take(key, float(per_minute), per_minute / 60.0)

    async def _check(self, key: str, per_minute: int) -> None:
        if per_minute <= 0:
            return
        wait = await self._take(key, per_minute)
        if wait > 0:
            raise HttpError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many requests, slow down",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
                reason="RATE_LIMITED",
            )

    async def check_ip(self, ip: str) -> None:
        await self._check("ip:" + ip, self.per_ip)

    async def check_user(self, user_id: str) -> None:
        await self._check("user:" + user_id, self.per_user)
