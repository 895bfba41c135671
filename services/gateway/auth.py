"""Accounts and tokens: argon2id password hashes, HS256 JWTs, revocable refresh tokens.

Access tokens live ``ACCESS_TOKEN_TTL_S`` (15 min) and are checked on every call: signature with
HS256 only, ``iss``, ``aud``, ``exp``, and that the user is still active (storage GetUser, cached
a few seconds, so deactivating a user ends their access within that time, open streams included).

Refresh tokens are single use: their ``jti`` is kept in an allow-list (Redis when REDIS_URL is set,
else this process) until it is used, logged out or expires; using one removes it and issues a
new pair, so a stolen refresh token works at most once.

Administrators: routes of an admin-only backend (the metrics service) answer 403 to anyone else.
Who is one is decided per request from the user's current email (the same cached GetUser), never
from a token claim, so removing someone from ADMIN_EMAILS takes effect on the gateway's restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from studyassist.core.cache import LruTtlCache
from studyassist.core.channels import user_metadata
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from gateway.config import EMAIL_RE
from gateway.responses import HttpError, from_rpc_error, json_response, parse_json_body, read_body

T = TypeVar("T")

ALGORITHM = "HS256"
# Clock skew tolerated on exp/iat between gateway replicas.
LEEWAY_S = 5
MIN_PASSWORD = 8
# argon2 hashes any length, but an unbounded password is free CPU for an attacker.
MAX_PASSWORD = 256
MAX_DISPLAY_NAME = 100


@dataclass(frozen=True, slots=True)
class TokenConfig:
    secret: str
    issuer: str
    audience: str
    access_ttl_s: int
    refresh_ttl_s: int


class RefreshStore(Protocol):
    name: str

    async def add(self, jti: str, ttl_s: int) -> None: ...

    async def take(self, jti: str) -> bool:
        """Remove ``jti``; True if it was there (the token had not been used or revoked)."""
        ...


class MemoryRefreshStore:
    """In-process allow-list: fine for one gateway replica; lost on restart (users log in again)."""

    name = "memory"

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self._expiry: dict[str, float] = {}
        self._max_entries = max_entries

    async def add(self, jti: str, ttl_s: int) -> None:
        now = time.monotonic()
        if len(self._expiry) >= self._max_entries:
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
        self._expiry[jti] = now + ttl_s

    async def take(self, jti: str) -> bool:
        expiry = self._expiry.pop(jti, None)
        return expiry is not None and expiry > time.monotonic()


class RedisRefreshStore:
    """Shared allow-list for several replicas. Redis down: refresh answers 503 (fails closed)."""

    name = "redis"

    def __init__(self, redis: Redis, prefix: str = "gateway:refresh:") -> None:
        self._redis = redis
        self._prefix = prefix

    async def add(self, jti: str, ttl_s: int) -> None:
        try:
            await self._redis.set(self._prefix + jti, b"1", ex=ttl_s)
        except (RedisError, OSError) as exc:
            raise HttpError(
                grpc.StatusCode.UNAVAILABLE, "token store unavailable", reason="TOKEN_STORE_UNAVAILABLE"
            ) from exc

    async def take(self, jti: str) -> bool:
        try:
            # DEL is atomic: of two concurrent uses of one token, exactly one sees 1.
            return bool(await self._redis.delete(self._prefix + jti))
        except (RedisError, OSError) as exc:
            raise HttpError(
                grpc.StatusCode.UNAVAILABLE, "token store unavailable", reason="TOKEN_STORE_UNAVAILABLE"
            ) from exc


def _unauthenticated(message: str = "invalid or expired token", reason: str = "TOKEN_INVALID") -> HttpError:
    return HttpError(grpc.StatusCode.UNAUTHENTICATED, message, headers={"WWW-Authenticate": "Bearer"}, reason=reason)


class Tokens:
    def __init__(self, config: TokenConfig, cache_entries: int = 50_000) -> None:
        self.config = config
        # Verified tokens by their exact text: a browser sends the same token many times, and
        # checking the signature and claims again costs more than the rest of a cached request.
        # A hit is still refused once expired; revocation of access tokens is by user (GetUser).
        self._verified: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._cache_entries = cache_entries

    def issue(self, user_id: str, kind: str, now: float | None = None) -> tuple[str, str, int]:
        """(token, jti, ttl_s)."""
        issued = int(now if now is not None else time.time())
        ttl = self.config.access_ttl_s if kind == "access" else self.config.refresh_ttl_s
        jti = uuid.uuid4().hex
        claims = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": user_id,
            "iat": issued,
            "exp": issued + ttl,
            "jti": jti,
            "typ": kind,
        }
        return jwt.encode(claims, self.config.secret, algorithm=ALGORITHM), jti, ttl

    def verify(self, token: str, kind: str) -> dict[str, Any]:
        cached = self._verified.get((token, kind))
        if cached is not None:
            if cached["exp"] + LEEWAY_S > time.time():
                return cached
            del self._verified[(token, kind)]
        claims = self._verify(token, kind)
        self._verified[(token, kind)] = claims
        if len(self._verified) > self._cache_entries:
            self._verified.popitem(last=False)
        return claims

    def _verify(self, token: str, kind: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.config.secret,
                algorithms=[ALGORITHM],
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
                leeway=LEEWAY_S,
            )
        except jwt.PyJWTError:
            raise _unauthenticated() from None
        if claims.get("typ") != kind or not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise _unauthenticated()
        return claims


@dataclass(frozen=True, slots=True)
class AdminPolicy:
    """Who is an administrator: the users whose email is in ``emails`` (ADMIN_EMAILS); with
    ``everyone`` (development mode with ADMIN_EMAILS empty), every signed-in user."""

    emails: frozenset[str] = frozenset()
    everyone: bool = False

    @classmethod
    def from_settings(cls, emails: frozenset[str], *, production: bool) -> AdminPolicy:
        return cls(frozenset(e.lower() for e in emails), everyone=not emails and not production)

    def allows(self, email: str) -> bool:
        return self.everyone or email.strip().lower() in self.emails


def _forbidden(message: str = "this needs an administrator account") -> HttpError:
    return HttpError(grpc.StatusCode.PERMISSION_DENIED, message, reason="ADMIN_ONLY")


class Authenticator:
    """Verifies access tokens, that their user is still active and, for admin-only routes, an administrator."""

    def __init__(
        self,
        tokens: Tokens,
        storage: storage_pb2_grpc.StorageServiceAsyncStub,
        cache_ttl_s: float,
        admins: AdminPolicy | None = None,
    ) -> None:
        self.tokens = tokens
        self.admins = admins or AdminPolicy()
        self._storage = storage
        # user id -> b"1" or b"0" (active) followed by the user's email, for the admin rule.
        self._users = LruTtlCache(max_entries=100_000, ttl_s=cache_ttl_s)

    async def _user(self, user_id: str) -> tuple[bool, str]:
        """(active, email) of ``user_id``, cached a few seconds."""
        cached = self._users.get(user_id)
        if cached is not None:
            return cached[:1] == b"1", cached[1:].decode()
        try:
            user = await self._storage.GetUser(storage_pb2.GetUserRequest(), metadata=user_metadata(user_id), timeout=3)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED):
                active, email = False, ""
            else:
                raise from_rpc_error(exc) from None
        else:
            active, email = user.active, user.email
        self._users.set(user_id, (b"1" if active else b"0") + email.encode())
        return active, email

    async def user_is_active(self, user_id: str) -> bool:
        return (await self._user(user_id))[0]

    async def is_admin(self, user_id: str) -> bool:
        active, email = await self._user(user_id)
        return active and self.admins.allows(email)

    def forget(self, user_id: str) -> None:
        self._users.delete_prefix(user_id)

    async def authenticate(self, request: Request, *, allow_query_token: bool = False, admin_only: bool = False) -> str:
        """The verified user id of ``request``; 401 without a valid token of an active user, and 403
        when ``admin_only`` and the user is not an administrator."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            # EventSource cannot set headers: streams may carry the token as ?access_token=.
            token = request.query_params.get("access_token", "") if allow_query_token else ""
            if not token:
                raise _unauthenticated("missing bearer token", "TOKEN_MISSING")
        user_id = str(self.tokens.verify(token.strip(), "access")["sub"])
        active, email = await self._user(user_id)
        if not active:
            raise _unauthenticated("account is not active", "ACCOUNT_INACTIVE")
        if admin_only and not self.admins.allows(email):
            raise _forbidden()
        return user_id


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    value = parse_json_body(await read_body(request, limit))
    if not isinstance(value, dict):
        raise HttpError(
            grpc.StatusCode.INVALID_ARGUMENT, "request body must be a JSON object", reason="INVALID_REQUEST"
        )
    return value


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if not isinstance(value, str):
        raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be a string", reason="INVALID_REQUEST")
    return value


class PasswordWork:
    """Runs argon2 hashing off the event loop, a few at a time.

    Each hash costs tens of milliseconds of CPU by design; a burst of sign-ins must not take every core from
    the requests of students already signed in. Beyond ``max_waiting`` admitted sign-ins the answer is
    429 at once, rather than a long silent wait, and before any other work of the request (a refused
    sign-in used to fetch the account from storage first: at 1,000 students signing in at once, most
    of storage's calls were for sign-ins about to be refused). Retry-After says when the queue ahead
    will have been worked off, from the measured time per hash: a fixed "2" while ten seconds of
    hashing is queued brings every refused client back to be refused again, a storm of requests doing
    nothing.
    """

    # The first estimate of one hash, before any is measured (argon2id at OWASP's minimum on a laptop).
    INITIAL_SECONDS_PER_HASH = 0.05
    # Weight of the newest measurement in the moving average.
    SMOOTHING = 0.2

    def __init__(self, hasher: PasswordHasher, concurrency: int, max_waiting: int) -> None:
        self._hasher = hasher
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._max_waiting = max_waiting
        self._waiting = 0
        self.seconds_per_hash = self.INITIAL_SECONDS_PER_HASH

    def retry_after_s(self) -> int:
        """Whole seconds until the hashes queued now are done."""
        return max(1, math.ceil(self._waiting * self.seconds_per_hash / self._concurrency))

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """A place in the queue for one sign-in's hash, or 429 with Retry-After at once."""
        if self._waiting >= self._max_waiting:
            raise HttpError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many sign-ins at once; try again in a moment",
                headers={"Retry-After": str(self.retry_after_s())},
                reason="RATE_LIMITED",
            )
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1

    async def compute(self, work: Callable[[], T]) -> T:
        """Run ``work`` (one hash or verification) when a slot is free; call it while admitted."""
        async with self._slots:
            started = time.perf_counter()
            result = await asyncio.to_thread(work)
            self.seconds_per_hash += self.SMOOTHING * (time.perf_counter() - started - self.seconds_per_hash)
            return result

    async def run(self, work: Callable[[], T]) -> T:
        async with self.admitted():
            return await self.compute(work)

    async def hash(self, password: str) -> str:
        return await self.run(lambda: self._hasher.hash(password))


class AuthRoutes:
    """POST /v1/auth/{register,login,refresh,logout}: the only hand-written API handlers."""

    def __init__(
        self,
        authenticator: Authenticator,
        storage: storage_pb2_grpc.StorageServiceAsyncStub,
        refresh_store: RefreshStore,
        max_body_bytes: int,
        hasher: PasswordHasher,
        hash_concurrency: int = 1,
        hash_max_waiting: int = 128,
    ) -> None:
        self._auth = authenticator
        self._tokens = authenticator.tokens
        self._storage = storage
        self._refresh = refresh_store
        self._limit = max_body_bytes
        self._hasher = hasher
        self._dummy_hash = self._hasher.hash("timing-equaliser")
        self._work = PasswordWork(self._hasher, hash_concurrency, hash_max_waiting)

    async def _token_pair(self, user: storage_pb2.User, status: int) -> Response:
        access, _, access_ttl = self._tokens.issue(user.user_id, "access")
        refresh, jti, refresh_ttl = self._tokens.issue(user.user_id, "refresh")
        await self._refresh.add(jti, refresh_ttl)
        return json_response(
            {
                "access_token": access,
                "refresh_token": refresh,
                "token_type": "bearer",
                "expires_in": access_ttl,
                "user": {
                    "user_id": user.user_id,
                    "email": user.email,
                    "display_name": user.display_name,
                    # For the web app's navigation only: every admin-only route checks again.
                    "is_admin": self._auth.admins.allows(user.email),
                },
            },
            status,
            {"Cache-Control": "no-store"},
        )

    async def register(self, request: Request) -> Response:
        body = await read_json_object(request, self._limit)
        email = _string(body, "email").strip().lower()
        password = _string(body, "password")
        display_name = _string(body, "display_name").strip()
        if not EMAIL_RE.fullmatch(email):
            raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, "email is not a valid address", reason="EMAIL_INVALID")
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise HttpError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters",
                reason="PASSWORD_LENGTH",
                args={"min": MIN_PASSWORD, "max": MAX_PASSWORD},
            )
        if not 1 <= len(display_name) <= MAX_DISPLAY_NAME:
            raise HttpError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"display_name must be 1 to {MAX_DISPLAY_NAME} characters",
                reason="DISPLAY_NAME_LENGTH",
                args={"min": 1, "max": MAX_DISPLAY_NAME},
            )
        password_hash = await self._work.hash(password)
        try:
            user = await self._storage.CreateUser(
                storage_pb2.CreateUserRequest(email=email, display_name=display_name, password_hash=password_hash)
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return await self._token_pair(user, 201)

    async def login(self, request: Request) -> Response:
        body = await read_json_object(request, self._limit)
        email = _string(body, "email").strip().lower()
        password = _string(body, "password")
        if not email or not password or len(password) > MAX_PASSWORD:
            raise _unauthenticated("invalid email or password", "INVALID_CREDENTIALS")
        async with self._work.admitted():
            try:
                credentials = await self._storage.GetUserByEmail(storage_pb2.GetUserByEmailRequest(email=email))
                stored_hash = credentials.password_hash
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise from_rpc_error(exc) from None
                # Hash anyway, so the answer takes as long whether or not the email exists.
                credentials, stored_hash = None, self._dummy_hash
            valid = await self._work.compute(lambda: self._verify(stored_hash, password))
        if credentials is None or not valid or not credentials.user.active:
            raise _unauthenticated("invalid email or password", "INVALID_CREDENTIALS")
        return await self._token_pair(credentials.user, 200)

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def refresh(self, request: Request) -> Response:
        body = await read_json_object(request, self._limit)
        claims = self._tokens.verify(_string(body, "refresh_token"), "refresh")
        if not await self._refresh.take(str(claims["jti"])):
            raise _unauthenticated("refresh token was already used or revoked", "REFRESH_TOKEN_USED")
        user_id = str(claims["sub"])
        self._auth.forget(user_id)
        if not await self._auth.user_is_active(user_id):
            raise _unauthenticated("account is not active", "ACCOUNT_INACTIVE")
        try:
            user = await self._storage.GetUser(storage_pb2.GetUserRequest(), metadata=user_metadata(user_id))
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        return await self._token_pair(user, 200)

    async def logout(self, request: Request) -> Response:
        body = await read_json_object(request, self._limit)
        claims = self._tokens.verify(_string(body, "refresh_token"), "refresh")
        await self._refresh.take(str(claims["jti"]))
        return Response(status_code=204)
