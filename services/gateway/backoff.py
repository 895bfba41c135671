"""Exponential backoff against password guessing: per account, per client address, and per account
from one address.

An audit sent 240 wrong passwords to one account, 200 of them at once: every one got 401, none
429. Each sign-in attempt is now counted *before* its password is checked (so a parallel burst is
counted as it arrives, not after its hashes finish); after ``free`` attempts a key makes the next
one wait 1 s, then 2, 4, 8 ... up to its cap, answered 429 with Retry-After and no hash computed.
A successful sign-in clears the account's counters.

Three keys, so that an attacker cannot lock a student out for long:
- the account from one address (``pair``): the guesser's own address is slowed up to
  ``max_backoff_s`` (15 min by default);
- the account from anywhere (``account``): slows a guesser who spreads over many addresses, but
  only up to ``account_max_backoff_s`` (60 s): the student, from their own address, waits at most
  that long whatever an attacker does;
- the address over every account (``ip``): against one address trying many accounts, with many
  more free attempts (a university's students share a few NAT addresses).

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
from studyassist.core.cache import REDIS_ERRORS, RedisBackoff

from gateway.responses import HttpError

# A key's count is forgotten this long after its last attempt.
WINDOW_S = 3600
# The first wait; each further attempt doubles it.
BASE_S = 1.0

# KEYS: the counters. ARGV: window, base, then (free, cap) per key. Refuses (returns the wait, no
# count) while any key is waiting; else counts the attempt on every key and sets when each allows
# the next one. Returns "0" when admitted.
_ADMIT_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local window = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local wait = 0
for i, key in ipairs(KEYS) do
  local at = tonumber(redis.call('HGET', key, 'until') or '0') or 0
  if at - now > wait then wait = at - now end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  local free = tonumber(ARGV[1 + 2 * i])
  local cap = tonumber(ARGV[2 + 2 * i])
  local n = redis.call('HINCRBY', key, 'n', 1)
  local delay = 0
  if n >= free then delay = math.min(cap, base * 2 ^ (n - free)) end
  redis.call('HSET', key, 'until', tostring(now + delay))
  redis.call('EXPIRE', key, window)
end
return '0'
"""

# A success: KEYS[1..] are cleared, except the last (the address's), whose attempt is given back.
_SUCCEED_LUA = """
for i = 1, #KEYS - 1 do redis.call('DEL', KEYS[i]) end
local ip = KEYS[#KEYS]
if redis.call('EXISTS', ip) == 1 and tonumber(redis.call('HGET', ip, 'n') or '0') > 0 then
  redis.call('HINCRBY', ip, 'n', -1)
end
return 1
"""


@dataclass(frozen=True, slots=True)
class BackoffSettings:
    free_attempts: int = 5
    ip_free_attempts: int = 50
    account_max_backoff_s: float = 60.0
    max_backoff_s: float = 900.0


def delay(attempts: int, free: int, cap: float) -> float:
    """Seconds the next attempt waits after ``attempts`` counted ones."""
    return 0.0 if attempts < free else min(cap, BASE_S * 2.0 ** (attempts - free))


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

    def admit(self, rules: list[tuple[str, int, float]]) -> float:
        now = time.monotonic()
        wait = max((self._get(key, now)[1] - now for key, _, _ in rules), default=0.0)
        if wait > 0:
            return wait
        for key, free, cap in rules:
            attempts = self._get(key, now)[0] + 1
            self._keys[key] = (attempts, now + delay(attempts, free, cap), now + WINDOW_S)
            self._keys.move_to_end(key)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
        return 0.0

    def succeed(self, cleared: list[str], address: str) -> None:
        for key in cleared:
            self._keys.pop(key, None)
        entry = self._keys.get(address)
        if entry is not None and entry[0] > 0:
            self._keys[address] = (entry[0] - 1, entry[1], entry[2])


class SignInBackoff:
    def __init__(self, settings: BackoffSettings, redis: Redis | None, prefix: str = "gateway:signin:") -> None:
        self.settings = settings
        self._prefix = prefix
        self._admit: Any = redis.register_script(_ADMIT_LUA) if redis is not None else None
        self._succeed: Any = redis.register_script(_SUCCEED_LUA) if redis is not None else None
        self._local = LocalCounters()
        self._redis_backoff = RedisBackoff("sign-in backoff counts locally")

    @property
    def backend(self) -> str:
        return "redis" if self._admit is not None else "local"

    def _keys(self, email: str, address: str) -> tuple[str, str, str]:
        return (
            f"{self._prefix}pair:{email}|{address}",
            f"{self._prefix}account:{email}",
            f"{self._prefix}ip:{address}",
        )

    async def admit(self, email: str, address: str) -> None:
        """Count one sign-in attempt, or 429 with Retry-After while one of its keys is waiting."""
        s = self.settings
        pair, account, ip = self._keys(email, address)
        rules = [
            (pair, s.free_attempts, s.max_backoff_s),
            (account, s.free_attempts, s.account_max_backoff_s),
            (ip, s.ip_free_attempts, s.max_backoff_s),
        ]
        wait: float | None = None
        if self._admit is not None and self._redis_backoff.ready():
            args: list[float] = [WINDOW_S, BASE_S]
            for _, free, cap in rules:
                args += [free, cap]
            try:
                wait = float(await self._admit(keys=[k for k, _, _ in rules], args=args))
            except REDIS_ERRORS as exc:
                self._redis_backoff.failed(exc)
        if wait is None:
            wait = self._local.admit(rules)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HttpError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed sign-ins; try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
                reason="SIGN_IN_BACKOFF",
                args={"seconds": seconds},
            )

    async def succeeded(self, email: str, address: str) -> None:
        pair, account, ip = self._keys(email, address)
        # Both stores: the attempt may have been counted in either (Redis failing since, or back).
        self._local.succeed([pair, account], ip)
        if self._succeed is not None and self._redis_backoff.ready():
            try:
                await self._succeed(keys=[pair, account, ip])
            except REDIS_ERRORS as exc:
                self._redis_backoff.failed(exc)
