"""Accounts' roles and sign-ins (refresh-token families), kept in PostgreSQL.

Refresh tokens used to live in Redis only: with Redis down sign-in answered 503, and a Redis restart
signed every student out. Here they are rows, keyed by the SHA-256 of the token's id (``jti``), so
neither a database dump nor a log line holds a usable token. Rotation follows the OAuth 2.0
Security BCP: each refresh token is used once and replaced; a second use of one is a replay, and
ends its whole sign-in, the token that was issued from it included.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import asyncpg
from studyassist.core.errors import InvalidArgument
from studyassist.storage.v1 import storage_pb2

from storage.db import Connection, Database

ROLES = ("student", "admin")
HASH_BYTES = 32  # SHA-256
# The longest a refresh token may live (REFRESH_TOKEN_TTL_S is at most a year) and the longest the
# ended sign-ins asked about may reach back (ACCESS_TOKEN_TTL_S is at most a day, plus leeway).
MAX_TTL_S = 366 * 86_400
MAX_ENDED_WITHIN_S = 2 * 86_400


def normalise_email(email: str) -> str:
    """How an address is compared: trimmed, any case (the users_email_lower index is on lower())."""
    return email.strip().lower()


def token_hash(value: bytes, field: str) -> bytes:
    if len(value) != HASH_BYTES:
        raise InvalidArgument(f"{field} must be a SHA-256 digest ({HASH_BYTES} bytes)")
    return value


def ttl(value: int) -> int:
    if not 1 <= value <= MAX_TTL_S:
        raise InvalidArgument(f"ttl_s must be between 1 and {MAX_TTL_S}")
    return value


def parse_new_sign_in(sign_in: storage_pb2.NewSignIn) -> tuple[uuid.UUID, bytes, int]:
    try:
        sign_in_id = uuid.UUID(sign_in.sign_in_id)
    except ValueError:
        raise InvalidArgument("sign_in_id is not a valid id") from None
    return sign_in_id, token_hash(sign_in.refresh_token_hash, "refresh_token_hash"), ttl(sign_in.ttl_s)


async def start_sign_in(conn: Connection, user_id: uuid.UUID, sign_in: storage_pb2.NewSignIn) -> None:
    """A new sign-in with its first refresh token (call inside a transaction)."""
    sign_in_id, first, ttl_s = parse_new_sign_in(sign_in)
    # The user's sign-ins past their expiry are history nobody needs: their refresh tokens can no
    # longer be used and their access tokens have expired long since. Cleared here, per user
    # (indexed), so the tables stay the size of the live sign-ins without a sweeper.
    await conn.execute("DELETE FROM sign_ins WHERE user_id = $1 AND expires_at < now() - interval '2 days'", user_id)
    try:
        await conn.execute(
            "INSERT INTO sign_ins (id, user_id, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))",
            sign_in_id,
            user_id,
            ttl_s,
        )
        await conn.execute(
            "INSERT INTO refresh_tokens (token_hash, sign_in_id, expires_at) "
            "VALUES ($1, $2, now() + make_interval(secs => $3))",
            first,
            sign_in_id,
            ttl_s,
        )
    except asyncpg.UniqueViolationError:
        raise InvalidArgument("sign_in_id or refresh_token_hash is already in use") from None


async def account(conn: Connection, user_id: uuid.UUID, ended_within_s: int) -> asyncpg.Record | None:
    """The user's row with its role and the ids of its sign-ins ended within ``ended_within_s``."""
    if not 0 <= ended_within_s <= MAX_ENDED_WITHIN_S:
        raise InvalidArgument(f"ended_within_s must be between 0 and {MAX_ENDED_WITHIN_S}")
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT u.id, u.email, u.display_name, u.active, u.created_at, u.role, "
        " ARRAY(SELECT s.id FROM sign_ins s WHERE s.user_id = u.id "
        "       AND s.ended_at > now() - make_interval(secs => $2)) AS ended "
        "FROM users u WHERE u.id = $1",
        user_id,
        ended_within_s,
    )
    return row


async def rotate(
    db: Database, user_id: uuid.UUID, old: bytes, new: bytes, ttl_s: int
) -> tuple[storage_pb2.RefreshOutcome, uuid.UUID | None]:
    """Exchange the refresh token hashed ``old`` for one hashed ``new``, in one transaction.

    The row is locked (FOR UPDATE), so of two concurrent uses of one token exactly one rotates and
    the other sees it used: a replay, which ends the sign-in for both.
    """
    async with db.connection() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT t.sign_in_id, t.used_at, t.expires_at > now() AS live, s.ended_at "
            "FROM refresh_tokens t JOIN sign_ins s ON s.id = t.sign_in_id "
            "WHERE t.token_hash = $1 AND s.user_id = $2 FOR UPDATE OF t, s",
            old,
            user_id,
        )
        if row is None:
            return storage_pb2.REFRESH_OUTCOME_UNKNOWN, None
        sign_in_id: uuid.UUID = row["sign_in_id"]
        if row["ended_at"] is not None:
            return storage_pb2.REFRESH_OUTCOME_ENDED, sign_in_id
        if row["used_at"] is not None:
            # Committed with the answer: the replay ends the sign-in whoever holds its newer token.
            await end(conn, sign_in_id, "reuse")
            return storage_pb2.REFRESH_OUTCOME_REUSED, sign_in_id
        if not row["live"]:
            return storage_pb2.REFRESH_OUTCOME_UNKNOWN, sign_in_id
        await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1", old)
        try:
            await conn.execute(
                "INSERT INTO refresh_tokens (token_hash, sign_in_id, expires_at) "
                "VALUES ($1, $2, now() + make_interval(secs => $3))",
                new,
                sign_in_id,
                ttl_s,
            )
        except asyncpg.UniqueViolationError:
            raise InvalidArgument("new_refresh_token_hash is already in use") from None
        await conn.execute(
            "UPDATE sign_ins SET expires_at = greatest(expires_at, now() + make_interval(secs => $2)) WHERE id = $1",
            sign_in_id,
            ttl_s,
        )
        return storage_pb2.REFRESH_OUTCOME_ROTATED, sign_in_id


async def end(conn: Connection, sign_in_id: uuid.UUID, reason: str) -> None:
    await conn.execute(
        "UPDATE sign_ins SET ended_at = now(), end_reason = $2 WHERE id = $1 AND ended_at IS NULL", sign_in_id, reason
    )


async def end_by_token(db: Database, user_id: uuid.UUID, token: bytes) -> uuid.UUID | None:
    """Logout: end the sign-in of the caller's refresh token hashed ``token`` (used or not)."""
    async with db.connection() as conn, conn.transaction():
        sign_in_id: uuid.UUID | None = await conn.fetchval(
            "SELECT s.id FROM refresh_tokens t JOIN sign_ins s ON s.id = t.sign_in_id "
            "WHERE t.token_hash = $1 AND s.user_id = $2",
            token,
            user_id,
        )
        if sign_in_id is not None:
            await end(conn, sign_in_id, "logout")
    return sign_in_id


async def set_role(db: Database, email: str, role: str) -> uuid.UUID | None:
    """Give the account with ``email`` the ``role``; its id, or None when there is no such account."""
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {', '.join(ROLES)}")
    async with db.connection() as conn:
        user_id: uuid.UUID | None = await conn.fetchval(
            "UPDATE users SET role = $2 WHERE lower(email) = $1 RETURNING id", normalise_email(email), role
        )
    return user_id


async def admins(db: Database) -> list[asyncpg.Record]:
    async with db.connection() as conn:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT id, email, active FROM users WHERE role = 'admin' ORDER BY lower(email)"
        )
    return rows


async def bootstrap_admins(db: Database, emails: Iterable[str]) -> list[str]:
    """Apply each ADMIN_EMAILS entry once: grant admin to the account that has the address now.

    An entry is recorded whether or not an account had it, so registering a listed address that
    nobody used yet never makes the registrant an administrator, and revoking a listed admin with
    ``python -m storage.admin revoke`` sticks across restarts. The emails granted now are returned.
    """
    granted: list[str] = []
    wanted = sorted({normalise_email(e) for e in emails if e.strip()})
    if not wanted:
        return granted
    async with db.connection() as conn, conn.transaction():
        # Replicas starting together: the first takes each entry, the others see it taken.
        await conn.execute("LOCK TABLE admin_bootstrap IN SHARE ROW EXCLUSIVE MODE")
        seen = {r["email"] for r in await conn.fetch("SELECT email FROM admin_bootstrap WHERE email = ANY($1)", wanted)}
        for email in wanted:
            if email in seen:
                continue
            user_id = await conn.fetchval("UPDATE users SET role = 'admin' WHERE lower(email) = $1 RETURNING id", email)
            await conn.execute("INSERT INTO admin_bootstrap (email, granted_to) VALUES ($1, $2)", email, user_id)
            if user_id is not None:
                granted.append(email)
    return granted
