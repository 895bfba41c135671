"""Two-layer cache: an in-process LRU with TTL, then Redis when configured.

Each service owns a key prefix. Redis being down or slow is a miss, never an error: every Redis
call has a short timeout, failures are counted, and after a failure Redis is skipped for a
short back-off so a dead Redis costs nothing on the hot path.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LayerStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0


class LruTtlCache:
    """A bounded in-process LRU whose entries expire after ``ttl_s`` seconds."""

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.stats = LayerStats()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None or entry[0] < time.monotonic():
            if entry is not None:
                del self._data[key]
            self.stats.misses += 1
            return None
        self._data.move_to_end(key)
        self.stats.hits += 1
        return entry[1]

    def set(self, key: str, value: bytes) -> None:
        if self.max_entries <= 0:
            return
        self._data[key] = (time.monotonic() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def delete_prefix(self, prefix: str) -> None:
        for key in [k for k in self._data if k.startswith(prefix)]:
            del self._data[key]


# What a Redis call raises when Redis is down, slow or gone away.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


@dataclass(slots=True)
class RedisBackoff:
    """When to try Redis: after a failure it is left alone for ``backoff_s``, so a dead Redis costs
    nothing on the hot path. Logs once per outage, saying what its user falls back to."""

    fallback: str
    backoff_s: float = 5.0
    errors: int = 0
    _down_until: float = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self._down_until < time.monotonic():
            log.warning(f"redis unavailable, {self.fallback}", extra={"fields": {"error": str(exc)}})
        self._down_until = time.monotonic() + self.backoff_s


@dataclass(slots=True)
class TwoLayerCache:
    """Local LRU in front of Redis. Values are bytes; callers choose the encoding."""

    prefix: str
    local: LruTtlCache
    redis: aioredis.Redis | None = None
    ttl_s: float = 3600.0
    redis_stats: LayerStats = field(default_factory=LayerStats)
    backoff: RedisBackoff = field(default_factory=lambda: RedisBackoff("caching locally only"))

    def layers(self) -> list[tuple[str, int, int]]:
        """(layer, hits, misses) for the local layer, and for Redis when one is configured."""
        layers = [("local", self.local.stats.hits, self.local.stats.misses)]
        if self.redis is not None:
            layers.append(("redis", self.redis_stats.hits, self.redis_stats.misses))
        return layers

    def export_counters(self, meter: metrics.Meter, name: str) -> None:
        """``<name>.hits`` and ``<name>.misses`` per layer: the metrics service turns them into hit ratios."""

        def hits(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(count, {"layer": layer}) for layer, count, _misses in self.layers()]

        def misses(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(count, {"layer": layer}) for layer, _hits, count in self.layers()]

        meter.create_observable_counter(f"{name}.hits", [hits], unit="{lookup}")
        meter.create_observable_counter(f"{name}.misses", [misses], unit="{lookup}")

    def _redis_usable(self) -> bool:
        return self.redis is not None and self.backoff.ready()

    def _redis_failed(self, exc: Exception) -> None:
        self.redis_stats.errors += 1
        self.backoff.failed(exc)

    async def get(self, key: str) -> bytes | None:
        value = self.local.get(key)
        if value is not None:
            return value
        if not self._redis_usable():
            return None
        assert self.redis is not None
        try:
            stored = await self.redis.get(self.prefix + key)
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            return None
        if stored is None:
            self.redis_stats.misses += 1
            return None
        self.redis_stats.hits += 1
        value = _as_bytes(stored)
        self.local.set(key, value)
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        found: list[bytes | None] = [self.local.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if not missing or not self._redis_usable():
            return found
        assert self.redis is not None
        try:
            values = await self.redis.mget([self.prefix + keys[i] for i in missing])
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            return found
        for i, value in zip(missing, values, strict=True):
            if value is None:
                self.redis_stats.misses += 1
            else:
                self.redis_stats.hits += 1
                found[i] = _as_bytes(value)
                self.local.set(keys[i], _as_bytes(value))
        return found

    async def set_many(self, items: dict[str, bytes]) -> None:
        for key, value in items.items():
            self.local.set(key, value)
        if not items or not self._redis_usable():
            return
        assert self.redis is not None
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(self.prefix + key, value, ex=max(1, int(self.ttl_s)))
                await pipe.execute()
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)

    async def set(self, key: str, value: bytes) -> None:
        await self.set_many({key: value})


def _as_bytes(value: bytes | str) -> bytes:
    # Clients are created without decode_responses, so Redis hands back bytes.
    return value if isinstance(value, bytes) else value.encode()


# Connections one client opens to Redis at most. A call beyond them waits for one to free up (within
# the call's timeout) rather than failing at once: redis-py's default pool raises past 100, which
# under a burst turned a healthy Redis into a "down" one for the whole back-off.
MAX_REDIS_CONNECTIONS = 100


def connect_redis(url: str, *, timeout_s: float = 0.25) -> aioredis.Redis | None:
    """A Redis client for ``url`` ("" = none). Connecting is lazy; failures surface as misses."""
    if not url:
        return None
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_REDIS_CONNECTIONS,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return aioredis.Redis.from_pool(pool)
