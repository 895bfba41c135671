"""Accounts and tokens: argon2id password hashes, HS256 JWTs, sign-ins kept by storage.

Access tokens live ``ACCESS_TOKEN_TTL_S`` (15 min) and are checked on every call: signature with
HS256 only, ``iss``, ``aud``, ``exp``, and the user's account (storage GetAccount, cached
USER_CACHE_TTL_S): still active, and the token's sign-in (claim ``sid``) not ended. Deactivating a
user or logging out therefore ends access within that time on every replica (at once on the one
that did it), open streams included.

A sign-in is one refresh-token family, stored by storage in PostgreSQL (hashes of the tokens' ids,
never the tokens), so sign-in needs no Redis and a Redis restart signs nobody out. Refresh tokens
are single use (rotation): using one replaces it; using one a second time is a replay, and ends the
whole sign-in, the newer token included (OAuth 2.0 Security BCP). Registration stores the account
and its first sign-in in one transaction. Logout ends the sign-in: its refresh tokens stop working
and its access tokens are refused until they expire (GetAccount lists the sign-ins ended within an
access token's lifetime; a deny-list by sign-in id in the database, durable and shared by every
replica, at no extra call per request since the account is looked up anyway).

Wrong passwords are slowed per account and per address (gateway.backoff).

Administrators: routes of an admin-only backend (the metrics service) answer 403 to anyone else.
The role is stored with the account (``python -m storage.admin grant EMAIL``; ADMIN_EMAILS only
bootstraps accounts that exist) and read per request from the same cached GetAccount, never from a
token claim, so a revoke takes effect within USER_CACHE_TTL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.requests import Request
from starlette.responses import Response
from studyassist.core.channels import user_metadata
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from gateway.backoff import SignInBackoff
from gateway.config import EMAIL_RE
from gateway.responses import HttpError, from_rpc_error, json_response, parse_json_body, read_body

T = TypeVar("T")

log = logging.getLogger(__name__)

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


def token_id_hash(jti: str) -> bytes:
    """What storage keeps of a refresh token: the SHA-256 of its id. The id is 128 random bits
    inside a signed token, so neither the hash nor the id alone can be used as a token."""
    return hashlib.sha256(jti.encode()).digest()


def _unauthenticated(message: str = "invalid or expired token", reason: str = "TOKEN_INVALID") -> HttpError:
    return HttpError(grpc.StatusCode.UNAUTHENTICATED, message, headers={"WWW-Authenticate": "Bearer"}, reason=reason)


class Tokens:
    def __init__(self, config: TokenConfig, cache_entries: int = 50_000) -> None:
        self.config = config
        # Verified tokens by their exact text: a browser sends the same token many times, and
        # checking the signature and claims again costs more than the rest of a cached request.
        # A hit is still refused once expired; revocation is checked after, by account (GetAccount).
        self._verified: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._cache_entries = cache_entries

    def issue(
        self, user_id: str, kind: str, sign_in_id: str, jti: str | None = None, now: float | None = None
    ) -> tuple[str, str, int]:
        """(token, jti, ttl_s) of a token of the sign-in ``sign_in_id`` (its claim ``sid``)."""
        issued = int(now if now is not None else time.time())
        ttl = self.config.access_ttl_s if kind == "access" else self.config.refresh_ttl_s
        jti = jti or uuid.uuid4().hex
        claims = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": user_id,
            "iat": issued,
            "exp": issued + ttl,
            "jti": jti,
            "typ": kind,
            "sid": sign_in_id,
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
    """Who is an administrator: accounts whose stored role is "admin"; with ``everyone``
    (development mode with ADMIN_EMAILS empty, nothing to set up on a laptop), every signed-in user."""

    everyone: bool = False

    @classmethod
    def from_settings(cls, emails: frozenset[str], *, production: bool) -> AdminPolicy:
        return cls(everyone=not emails and not production)

    def allows(self, role: str) -> bool:
        return self.everyone or role == "admin"


@dataclass(frozen=True, slots=True)
class AccountState:
    """What every request's check needs of its user's account."""

    active: bool
    role: str
    # Sign-ins ended within an access token's lifetime: their access tokens are refused.
    ended_sign_ins: frozenset[str]


INACTIVE = AccountState(False, "", frozenset())


def _forbidden(message: str = "this needs an administrator account") -> HttpError:
    return HttpError(grpc.StatusCode.PERMISSION_DENIED, message, reason="ADMIN_ONLY")


class Authenticator:
    """Verifies access tokens, that their user is still active and their sign-in not ended, and, for
    admin-only routes, that the user is an administrator."""

    def __init__(
        self,
        tokens: Tokens,
        storage: storage_pb2_grpc.StorageServiceAsyncStub,
        cache_ttl_s: float,
        admins: AdminPolicy | None = None,
        max_entries: int = 100_000,
    ) -> None:
        self.tokens = tokens
        self.admins = admins or AdminPolicy()
        self._storage = storage
        self._ttl_s = cache_ttl_s
        self._max_entries = max_entries
        # user id -> (fetched until (monotonic), the account as storage said).
        self._accounts: OrderedDict[str, tuple[float, AccountState]] = OrderedDict()

    async def account(self, user_id: str) -> AccountState:
        """The account of ``user_id``, cached ``cache_ttl_s``."""
        entry = self._accounts.get(user_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        # An access token of a sign-in ended up to its lifetime ago may still be presented.
        within = self.tokens.config.access_ttl_s + 2 * LEEWAY_S
        try:
            reply = await self._storage.GetAccount(
                storage_pb2.GetAccountRequest(ended_within_s=within), metadata=user_metadata(user_id), timeout=3
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED):
                raise from_rpc_error(exc) from None
            state = INACTIVE
        else:
            state = AccountState(reply.user.active, reply.role, frozenset(reply.ended_sign_in_ids))
        self._accounts[user_id] = (time.monotonic() + self._ttl_s, state)
        self._accounts.move_to_end(user_id)
        while len(self._accounts) > self._max_entries:
            self._accounts.popitem(last=False)
        return state

    async def user_is_active(self, user_id: str) -> bool:
        return (await self.account(user_id)).active

    async def is_admin(self, user_id: str) -> bool:
        state = await self.account(user_id)
        return state.active and self.admins.allows(state.role)

    def forget(self, user_id: str) -> None:
        """Ask storage again on the user's next request (after their sign-in ended here, say)."""
        self._accounts.pop(user_id, None)

    async def authenticate(self, request: Request, *, allow_query_token: bool = False, admin_only: bool = False) -> str:
        """The verified user id of ``request``; 401 without a valid token of an active user and a
        sign-in not ended, and 403 when ``admin_only`` and the user is not an administrator."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            # EventSource cannot set headers: streams may carry the token as ?access_token=.
            token = request.query_params.get("access_token", "") if allow_query_token else ""
            if not token:
                raise _unauthenticated("missing bearer token", "TOKEN_MISSING")
        claims = self.tokens.verify(token.strip(), "access")
        user_id = str(claims["sub"])
        state = await self.account(user_id)
        if not state.active:
            raise _unauthenticated("account is not active", "ACCOUNT_INACTIVE")
        if claims.get("sid") in state.ended_sign_ins:
            raise _unauthenticated("this sign-in has ended (logged out); sign in again", "SIGN_IN_ENDED")
        if admin_only and not self.admins.allows(state.role):
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
        max_body_bytes: int,
        hasher: PasswordHasher,
        hash_concurrency: int = 1,
        hash_max_waiting: int = 128,
        backoff: SignInBackoff | None = None,
    ) -> None:
        self._auth = authenticator
        self._tokens = authenticator.tokens
        self._storage = storage
        self._limit = max_body_bytes
        self._hasher = hasher
        self._dummy_hash = self._hasher.hash("timing-equaliser")
        self._work = PasswordWork(self._hasher, hash_concurrency, hash_max_waiting)
        self._backoff = backoff

    def _new_sign_in(self) -> tuple[storage_pb2.NewSignIn, str]:
        """A sign-in for storage to keep, and its first refresh token's id."""
        jti = uuid.uuid4().hex
        sign_in = storage_pb2.NewSignIn(
            sign_in_id=str(uuid.uuid4()),
            refresh_token_hash=token_id_hash(jti),
            ttl_s=self._tokens.config.refresh_ttl_s,
        )
        return sign_in, jti

    def _token_pair(
        self, user: storage_pb2.User, role: str, sign_in_id: str, refresh_jti: str, status: int
    ) -> Response:
        access, _, access_ttl = self._tokens.issue(user.user_id, "access", sign_in_id)
        refresh, _, _ = self._tokens.issue(user.user_id, "refresh", sign_in_id, jti=refresh_jti)
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
                    "is_admin": self._auth.admins.allows(role),
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
        # The account and its first sign-in in one call (one transaction in storage): either the
        # student gets their tokens or no account is left behind to answer a retry with 409. What
        # follows the call is signing two tokens, which cannot fail.
        sign_in, jti = self._new_sign_in()
        try:
            user = await self._storage.CreateUser(
                storage_pb2.CreateUserRequest(
                    email=email, display_name=display_name, password_hash=password_hash, first_sign_in=sign_in
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        # A new account is a student's: admin rights are granted, never claimed by registering.
        return self._token_pair(user, "student", sign_in.sign_in_id, jti, 201)

    async def login(self, request: Request) -> Response:
        body = await read_json_object(request, self._limit)
        email = _string(body, "email").strip().lower()
        password = _string(body, "password")
        if not email or not password or len(password) > MAX_PASSWORD:
            raise _unauthenticated("invalid email or password", "INVALID_CREDENTIALS")
        address = request.client.host if request.client else ""
        if self._backoff is not None:
            await self._backoff.admit(email, address)
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
            if self._backoff is not None:
                await self._backoff.failed(email, address)
            raise _unauthenticated("invalid email or password", "INVALID_CREDENTIALS")
        if self._backoff is not None:
            await self._backoff.succeeded(email, address)
        sign_in, jti = self._new_sign_in()
        try:
            await self._storage.CreateSignIn(
                storage_pb2.CreateSignInRequest(sign_in=sign_in), metadata=user_metadata(credentials.user.user_id)
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        # The account as it is now (a role granted a moment ago, say) for this user's next requests.
        self._auth.forget(credentials.user.user_id)
        return self._token_pair(credentials.user, credentials.role, sign_in.sign_in_id, jti, 200)

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def refresh(self, request: Request) -> Response:
        body = await read_json_object(request, self._limit)
        claims = self._tokens.verify(_string(body, "refresh_token"), "refresh")
        user_id, sign_in_id = str(claims["sub"]), claims.get("sid")
        if not isinstance(sign_in_id, str) or not sign_in_id:
            # Issued before sign-ins were stored (Redis kept them): the student signs in again once.
            raise _unauthenticated("refresh token was already used or revoked", "REFRESH_TOKEN_USED")
        new_jti = uuid.uuid4().hex
        try:
            # Not retried: a retry of a rotation whose answer was lost would be taken for a replay.
            reply = await self._storage.RotateRefreshToken(
                storage_pb2.RotateRefreshTokenRequest(
                    refresh_token_hash=token_id_hash(str(claims["jti"])),
                    new_refresh_token_hash=token_id_hash(new_jti),
                    ttl_s=self._tokens.config.refresh_ttl_s,
                ),
                metadata=user_metadata(user_id),
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        if reply.outcome == storage_pb2.REFRESH_OUTCOME_REUSED:
            # A replay: storage ended the sign-in; its access tokens go on this replica's next check.
            self._auth.forget(user_id)
            log.warning(
                "refresh token reused; sign-in ended",
                extra={"fields": {"user_id": user_id, "sign_in": reply.sign_in_id}},
            )
        if reply.outcome != storage_pb2.REFRESH_OUTCOME_ROTATED:
            raise _unauthenticated("refresh token was already used or revoked", "REFRESH_TOKEN_USED")
        self._auth.forget(user_id)
        if not reply.account.user.active:
            raise _unauthenticated("account is not active", "ACCOUNT_INACTIVE")
        return self._token_pair(reply.account.user, reply.account.role, sign_in_id, new_jti, 200)

    async def logout(self, request: Request) -> Response:
        """End the sign-in of the refresh token: it and every token of its family stop working, and
        its access tokens are refused (on this replica at once, on others within USER_CACHE_TTL_S)."""
        body = await read_json_object(request, self._limit)
        claims = self._tokens.verify(_string(body, "refresh_token"), "refresh")
        user_id = str(claims["sub"])
        try:
            await self._storage.EndSignIn(
                storage_pb2.EndSignInRequest(refresh_token_hash=token_id_hash(str(claims["jti"]))),
                metadata=user_metadata(user_id),
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        self._auth.forget(user_id)
        return Response(status_code=204)
