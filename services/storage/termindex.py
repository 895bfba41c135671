"""The BM25 index in PostgreSQL: writing a document's or a session's terms, re-indexing what an
older tokenisation (or none) indexed, and ranking a caller's chunks or messages by a query."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from studyassist.storage.v1 import storage_pb2

from storage.bm25 import TERMS_VERSION, Postings, Scored, build_postings, rank, term_weights
from storage.db import Connection, Database
from storage.message_text import SESSION_TEXT_VERSION, searchable_text

log = logging.getLogger(__name__)

# A session's index is built by the tokenisation (TERMS_VERSION) from what message_text keeps of
# each message (SESSION_TEXT_VERSION): a change of either re-indexes it. Both only grow.
SESSION_TERMS_VERSION = 100 * TERMS_VERSION + SESSION_TEXT_VERSION
# History search is for finding what one said or was told: among messages matching about as well,
# the student's own come first (their words name the topic; an answer's are many and generic).
USER_MESSAGE_BOOST = 1.5
# Candidates ranked by BM25 before the boost reorders them: enough for a boosted message from
# below the page to reach it.
MESSAGE_CANDIDATES = 3

# The re-indexer's batch: documents (or sessions) per look at the table.
REINDEX_BATCH = 20


async def write_document_terms(conn: Connection, document_id: uuid.UUID, postings: Postings) -> None:
    """Replace ``document_id``'s index by ``postings`` (call inside a transaction)."""
    await conn.execute("DELETE FROM chunk_terms WHERE document_id = $1", document_id)
    await conn.execute(
        "INSERT INTO chunk_terms (user_id, term, document_id, chunks, tfs) "
        "SELECT d.user_id, t, d.id, c, f FROM documents d, unnest($2::text[], $3::bytea[], $4::bytea[]) AS x(t, c, f) "
        "WHERE d.id = $1",
        document_id,
        postings.terms,
        postings.items,
        postings.tfs,
    )
    await conn.execute(
        "UPDATE documents SET terms_version = $2, chunk_lengths = $3, term_total = $4 WHERE id = $1",
        document_id,
        TERMS_VERSION,
        postings.lengths,
        postings.total_length,
    )


async def append_session_terms(conn: Connection, session_id: uuid.UUID, user_id: uuid.UUID, postings: Postings) -> None:
    """Add new messages' postings to their session's index (inside the transaction that inserts them,
    with the session row locked, so positions are appended in order)."""
    await conn.execute(
        "INSERT INTO message_terms (user_id, term, session_id, positions, tfs) "
        "SELECT $1, t, $2, p, f FROM unnest($3::text[], $4::bytea[], $5::bytea[]) AS x(t, p, f) "
        "ON CONFLICT (user_id, term, session_id) DO UPDATE "
        "SET positions = message_terms.positions || excluded.positions, tfs = message_terms.tfs || excluded.tfs",
        user_id,
        session_id,
        postings.terms,
        postings.items,
        postings.tfs,
    )
    await conn.execute(
        "UPDATE chat_sessions SET message_lengths = message_lengths || $2, term_total = term_total + $3 WHERE id = $1",
        session_id,
        postings.lengths,
        postings.total_length,
    )


async def rank_chunks(
    conn: Connection,
    user_id: uuid.UUID,
    documents: Sequence[Mapping[str, Any]],
    terms: list[str],
    limit: int,
) -> tuple[list[Scored], dict[str, float]]:
    """The best ``limit`` chunks of ``documents`` (rows with id, term_chunks, term_total) by BM25,
    with the statistics of exactly those documents, and each term's idf over them."""
    indexed = [d for d in documents if d["term_chunks"] > 0]
    if not terms or not indexed:
        return [], {}
    ids = [d["id"] for d in indexed]
    rows = await conn.fetch(
        "SELECT t.document_id, t.term, t.chunks, t.tfs, "
        # Each document's lengths once, on its first row (the join brings them only where a term matched).
        " CASE WHEN row_number() OVER (PARTITION BY t.document_id) = 1 THEN d.chunk_lengths END AS lengths "
        "FROM chunk_terms t JOIN documents d ON d.id = t.document_id "
        "WHERE t.user_id = $1 AND t.term = ANY($2::text[]) AND t.document_id = ANY($3::uuid[])",
        user_id,
        terms,
        ids,
    )
    lengths = {r["document_id"]: r["lengths"] for r in rows if r["lengths"] is not None}
    count = sum(d["term_chunks"] for d in indexed)
    df: Counter[str] = Counter()
    for r in rows:
        df[r["term"]] += len(r["chunks"]) // 4
    scored = rank(
        ((r["document_id"], r["term"], r["chunks"], r["tfs"]) for r in rows),
        lengths,
        count=count,
        total_length=sum(d["term_total"] for d in indexed),
        limit=limit,
    )
    return scored, term_weights(terms, df, count)


async def rank_messages(conn: Connection, user_id: uuid.UUID, terms: list[str], limit: int) -> list[Scored]:
    """The caller's best ``limit`` messages by BM25 over all of their sessions, the student's own
    weighted up by USER_MESSAGE_BOOST."""
    if not terms:
        return []
    stats = await conn.fetchrow(
        "SELECT coalesce(sum(length(message_lengths) / 2), 0)::bigint AS n, "
        "coalesce(sum(term_total), 0)::bigint AS total FROM chat_sessions WHERE user_id = $1",
        user_id,
    )
    assert stats is not None  # an aggregate always returns a row
    if stats["n"] == 0:
        return []
    rows = await conn.fetch(
        "SELECT t.session_id, t.term, t.positions, t.tfs, "
        " CASE WHEN row_number() OVER (PARTITION BY t.session_id) = 1 THEN s.message_lengths END AS lengths "
        "FROM message_terms t JOIN chat_sessions s ON s.id = t.session_id "
        "WHERE t.user_id = $1 AND t.term = ANY($2::text[]) AND s.user_id = $1",
        user_id,
        terms,
    )
    lengths = {r["session_id"]: r["lengths"] for r in rows if r["lengths"] is not None}
    candidates = rank(
        ((r["session_id"], r["term"], r["positions"], r["tfs"]) for r in rows),
        lengths,
        count=int(stats["n"]),
        total_length=int(stats["total"]),
        limit=limit * MESSAGE_CANDIDATES,
    )
    if not candidates:
        return []
    roles = await conn.fetch(
        "SELECT m.session_id, m.position, m.role FROM messages m "
        "JOIN unnest($2::uuid[], $3::integer[]) AS k(session_id, position) "
        "ON m.session_id = k.session_id AND m.position = k.position WHERE m.user_id = $1",
        user_id,
        [c.owner for c in candidates],
        [c.item for c in candidates],
    )
    user_places = {(r["session_id"], r["position"]) for r in roles if r["role"] == storage_pb2.ROLE_USER}
    boosted = [
        Scored(c.owner, c.item, c.score * USER_MESSAGE_BOOST) if (c.owner, c.item) in user_places else c
        for c in candidates
    ]
    # Stable: equal scores keep rank's order (session, then position).
    boosted.sort(key=lambda c: -c.score)
    return boosted[:limit]


def _dense(rows: Sequence[asyncpg.Record], number: str, text: str) -> list[str]:
    """Texts by their item number from 0; a gap (never written so) becomes an empty item."""
    by_number = {r[number]: r[text] for r in rows}
    return [by_number.get(i, "") for i in range(max(by_number, default=-1) + 1)]


class Reindexer:
    """Indexes, in the background after start, the ready documents and the sessions whose index is
    missing (they predate migration 0003) or was built by an older tokenisation (TERMS_VERSION).

    Each document or session is re-indexed in its own transaction holding its row
    (FOR UPDATE SKIP LOCKED), so replicas starting together share the work and never write one twice.
    """

    def __init__(self, db: Database, ready_status: int) -> None:
        self.db = db
        self.ready_status = ready_status
        self._task: asyncio.Task[None] | None = None
        self.indexed = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bm25-reindex")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            await self.run_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not fatal: searches still work (by vectors) for what is not indexed; the next start retries.
            log.exception("re-indexing for BM25 failed")

    async def run_once(self) -> int:
        """Index everything outdated; the number of documents and sessions indexed."""
        done = 0
        while (batch := await self._documents()) > 0:
            done += batch
        while (batch := await self._sessions()) > 0:
            done += batch
        if done:
            log.info("re-indexed for BM25", extra={"fields": {"documents_and_sessions": done}})
        self.indexed += done
        return done

    async def _documents(self) -> int:
        done = 0
        async with self.db.connection() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id FROM documents WHERE terms_version < $1 AND status = $2 LIMIT $3 FOR UPDATE SKIP LOCKED",
                TERMS_VERSION,
                self.ready_status,
                REINDEX_BATCH,
            )
            for row in rows:
                texts = await conn.fetch(
                    "SELECT DISTINCT ON (chunk_index) chunk_index, text FROM chunks WHERE document_id = $1 "
                    "ORDER BY chunk_index",
                    row["id"],
                )
                postings = await asyncio.to_thread(build_postings, _dense(texts, "chunk_index", "text"))
                await write_document_terms(conn, row["id"], postings)
                done += 1
        return done

    async def _sessions(self) -> int:
        done = 0
        async with self.db.connection() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, user_id FROM chat_sessions WHERE terms_version < $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                SESSION_TERMS_VERSION,
                REINDEX_BATCH,
            )
            for row in rows:
                contents = await conn.fetch(
                    "SELECT position, role, content FROM messages WHERE session_id = $1 ORDER BY position", row["id"]
                )
                roles = {r["position"]: r["role"] for r in contents}
                texts = [
                    searchable_text(roles.get(i, 0), t) for i, t in enumerate(_dense(contents, "position", "content"))
                ]
                postings = await asyncio.to_thread(build_postings, texts)
                await conn.execute("DELETE FROM message_terms WHERE session_id = $1", row["id"])
                await conn.execute(
                    "UPDATE chat_sessions SET message_lengths = '', term_total = 0, terms_version = $2 WHERE id = $1",
                    row["id"],
                    SESSION_TERMS_VERSION,
                )
                await append_session_terms(conn, row["id"], row["user_id"], postings)
                done += 1
        return done
