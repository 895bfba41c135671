"""Token-bucket rate limits per user and per client IP.

With Redis the buckets are shared by every gateway replica (one Lua script, atomic, Redis's own
clock); without it, or while Redis is failing, each replica keeps local buckets, so the limit is
per replica rather than missing. An empty bucket answers 429 with ``Retry-After``.

A replica takes a few tokens from a shared bucket at once (a lease: ``lease_size``, a sixtieth of
the bucket, at most 16, kept at most ``LEASE_S``) and spends them locally, so a busy user or
address costs one Redis round trip per lease instead of one per request (two per API request,
address and user, before). The shared limit still holds exactly: leased tokens are gone from the
bucket; tokens a replica leased but did not spend in time are lost, which only makes the limit a
little stricter. Small buckets (under 120 a minute) lease one token at a time, as before. A refusal
is remembered until its Retry-After (spending elsewhere only empties a bucket further), so a client
hammering past its limit costs no round trips either.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any

import grpc
from redis.asyncio import Redis
from studyassist.core.cache import REDIS_ERRORS, RedisBackoff

from gateway.responses import HttpError

_TOKEN_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3]) or 1
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  allowed = math.min(math.floor(tokens), wanted)
  tokens = tokens - allowed
else
  retry = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return {allowed, tostring(retry)}
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


# Seconds a replica may keep tokens it leased from a shared bucket before they are forgotten.
LEASE_S = 1.0
MAX_LEASE = 16
# Keys with a lease held at once; beyond it every lease is dropped (memory stays bounded).
MAX_LEASED_KEYS = 100_000


def lease_size(per_minute: int) -> int:
    """Tokens taken from a shared bucket per Redis round trip: a sixtieth of it, 1 to MAX_LEASE."""
    return max(1, min(MAX_LEASE, per_minute // 60))


class RateLimiter:
    def __init__(
        self, per_user_per_minute: int, per_ip_per_minute: int, redis: Redis | None, prefix: str = "gateway:rl:"
    ) -> None:
        self.per_user = per_user_per_minute
        self.per_ip = per_ip_per_minute
        self._redis = redis
        self._prefix = prefix
        self._script: Any = redis.register_script(_TOKEN_BUCKET_LUA) if redis is not None else None
        self._local = LocalBuckets()
        self._backoff = RedisBackoff("rate limits fall back to local buckets")
        # key -> (tokens leased from the shared bucket and not spent yet, until when (monotonic));
        # -1 tokens: the bucket refused, and cannot hold a whole token again before then.
        self._leases: dict[str, tuple[int, float]] = {}

    @property
    def backend(self) -> str:
        return "redis" if self._redis is not None else "local"

    async def _take(self, key: str, per_minute: int) -> float:
        capacity, rate = float(per_minute), per_minute / 60.0
        if self._script is not None and self._backoff.ready():
            now = time.monotonic()
            left, until = self._leases.get(key, (0, 0.0))
            if until > now:
                if left > 0:
                    self._leases[key] = (left - 1, until)
                    return 0.0
                if left < 0:  # refused until then: the bucket cannot hold a whole token sooner
                    return until - now
            try:
                granted, retry = await self._script(
                    keys=[self._prefix + key], args=[capacity, rate, lease_size(per_minute)]
                )
            except REDIS_ERRORS as exc:
                self._backoff.failed(exc)
            else:
                granted, wait = int(granted), float(retry)
                if granted > 1 or (granted <= 0 and wait > 0):
                    if len(self._leases) >= MAX_LEASED_KEYS:
                        self._leases.clear()
                    now = time.monotonic()
                    self._leases[key] = (granted - 1, now + LEASE_S) if granted > 1 else (-1, now + wait)
                return 0.0 if granted > 0 else wait
        return self._local.take(key, capacity, rate)

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
