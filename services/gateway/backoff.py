"""Exponential backoff against password guessing: per account, per client address, and per account
from one address.

An audit sent 240 wrong passwords to one account, 200 of them at once: every one got 401, none
429. Each sign-in attempt on an account is now counted *before* its password is checked (so a
parallel burst is counted as it arrives, not after its hashes finish); after ``free`` attempts a key
makes the next one wait 1 s, then 2, 4, 8 ... up to its cap, answered 429 with Retry-After and no
hash computed. A successful sign-in clears the account's counters.

Three keys, so that an attacker cannot lock a student out for long:
- the account from one address (``pair``): the guesser's own address is slowed up to
  ``max_backoff_s`` (15 min by default);
- the account from anywhere (``account``): slows a guesser who spreads over many addresses, but
  only up to ``account_max_backoff_s`` (60 s): the student, from their own address, waits at most
  that long whatever an attacker does;
- the address over every account (``ip``): against one address trying many accounts, with many
  more free attempts, and counting failed attempts only: a university's students share a few NAT
  addresses, and a class signing in at once from one must not be refused.

Counters live in Redis (one Lua script per attempt, atomic, Redis's clock), shared by every
gateway replica; with no Redis, or while it fails (a timeout of a quarter second, then left alone
for a few seconds), each replica counts locally, so the protection is per replica rather than gone.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import grpc
from redis.asyncio import Redis
from studyassist.core.backoff import exponential_delay
from studyassist.core.cache import REDIS_ERRORS, RedisBackoff

from gateway.responses import HttpError

# A key's count is forgotten this long after its last attempt.
WINDOW_S = 3600
# The first wait; each further attempt doubles it.
BASE_S = 1.0

# KEYS: the keys, the first ARGV[3] of them counted. ARGV: window, base, that number, whether to
# check every key first (1) or only count (0), then (free, cap) per counted key. Refuses (returns the
# wait, counts nothing) while a checked key is waiting; else counts the attempt and sets when each
# counted key allows the next one. "0": admitted.
_ADMIT_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local window = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local counted = tonumber(ARGV[3])
local wait = 0
if ARGV[4] == '1' then
  for i, key in ipairs(KEYS) do
    local at = tonumber(redis.call('HGET', key, 'until') or '0') or 0
    if at - now > wait then wait = at - now end
  end
end
if wait > 0 then return tostring(wait) end
for i = 1, counted do
  local key = KEYS[i]
  local free = tonumber(ARGV[3 + 2 * i])
  local cap = tonumber(ARGV[4 + 2 * i])
  local n = redis.call('HINCRBY', key, 'n', 1)
  local delay = 0
  if n >= free then delay = math.min(cap, base * 2 ^ (n - free)) end
  redis.call('HSET', key, 'until', tostring(now + delay))
  redis.call('EXPIRE', key, window)
end
return '0'
"""


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    free_attempts: int = 5
    ip_free_attempts: int = 50
    account_max_backoff_s: float = 60.0
    max_backoff_s: float = 900.0


def delay(attempts: int, free: int, cap: float) -> float:
    """Seconds the next attempt waits after ``attempts`` counted ones (as _ADMIT_LUA computes it)."""
    return 0.0 if attempts < free else exponential_delay(attempts - free, BASE_S, cap)


class LocalCounters:
    """The same counting in this process, for when Redis is absent or failing."""

    def __init__(self, max_keys: int = 200_000) -> None:
        # key -> (attempts, allowed again at, forgotten at), monotonic clock.
        self._keys: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        self._max_keys = max_keys

    def _get(self, key: str, now: float) -> tuple[int, float]:
        entry = self._keys.get(key)
        if entry is None or entry[2] <= now:
            return 0, 0.0
        return entry[0], entry[1]

    def admit(self, checked: list[str], counted: list[tuple[str, int, float]]) -> float:
        """Seconds to wait while one of ``checked`` waits; else 0, with ``counted`` counted."""
        now = time.monotonic()
        wait = max((self._get(key, now)[1] - now for key in checked), default=0.0)
        if wait > 0:
            return wait
        for key, free, cap in counted:
            attempts = self._get(key, now)[0] + 1
            self._keys[key] = (attempts, now + delay(attempts, free, cap), now + WINDOW_S)
            self._keys.move_to_end(key)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        return 0.0

    def clear(self, keys: list[str]) -> None:
        for key in keys:
            self._keys.pop(key, None)


class SignInBackoff:
    def __init__(self, settings: BackoffSettings, redis: Redis | None, prefix: str = "gateway:signin:") -> None:
        self.settings = settings
        self._prefix = prefix
        self._redis = redis
        self._admit: Any = redis.register_script(_ADMIT_LUA) if redis is not None else None
        self._local = LocalCounters()
        self._redis_backoff = RedisBackoff("sign-in backoff counts locally")

    @property
    def backend(self) -> str:
        return "redis" if self._admit is not None else "local"

    def _rules(self, email: str, address: str) -> list[tuple[str, int, float]]:
        s, prefix = self.settings, self._prefix
        return [
            (f"{prefix}pair:{email}|{address}", s.free_attempts, s.max_backoff_s),
            (f"{prefix}account:{email}", s.free_attempts, s.account_max_backoff_s),
            (f"{prefix}ip:{address}", s.ip_free_attempts, s.max_backoff_s),
        ]

    async def _run(self, checked: list[str], counted: list[tuple[str, int, float]]) -> float:
        """The wait ``checked`` impose, counting ``counted`` when there is none (Redis, else locally)."""
        if self._admit is not None and self._redis_backoff.ready():
            args: list[float] = [WINDOW_S, BASE_S, len(counted), 1 if checked else 0]
            for _, free, cap in counted:
                args += [free, cap]
            keys = [key for key, _, _ in counted] + [key for key in checked if key not in {k for k, _, _ in counted}]
            try:
                return float(await self._admit(keys=keys, args=args))
            except REDIS_ERRORS as exc:
                self._redis_backoff.failed(exc)
        return self._local.admit(checked, counted)

    async def admit(self, email: str, address: str) -> None:
        """Count one sign-in attempt on the account, or 429 with Retry-After while the account, the
        account from this address, or this address waits."""
        rules = self._rules(email, address)
        wait = await self._run([key for key, _, _ in rules], rules[:2])
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HttpError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed sign-ins; try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
                reason="SIGN_IN_BACKOFF",
                args={"seconds": seconds},
            )

    async def failed(self, email: str, address: str) -> None:
        """A wrong password (or no such account): counted against the address too."""
        await self._run([], self._rules(email, address)[2:])

    async def succeeded(self, email: str, address: str) -> None:
        keys = [key for key, _, _ in self._rules(email, address)[:2]]
        # Both stores: the attempt may have been counted in either (Redis failing since, or back).
        self._local.clear(keys)
        if self._redis is not None and self._redis_backoff.ready():
            try:
                await self._redis.delete(*keys)
            except REDIS_ERRORS as exc:
                self._redis_backoff.failed(exc)
