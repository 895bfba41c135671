"""StorageService: every query is scoped by the caller's user id from call metadata."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import numpy as np
from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from studyassist.common.v1 import common_pb2
from studyassist.core.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from storage import accounts
from storage.blobs import BlobStore
from storage.bm25 import build_postings, coverage, highlight_words, query_terms, query_words
from storage.config import DEFAULT_VECTOR_WEIGHT
from storage.db import Connection, Database
from storage.embeddings import EmbeddingClient, EmbeddingError
from storage.filecontent import FILE_NAME_METADATA, list_file_chunks, media_type, owned_file, read_blob
from storage.ids import caller, decode_token, page_size, parse_id
from storage.ingest import Ingestor
from storage.message_text import searchable_text
from storage.paging import newest_first, split_page
from storage.ranking import Ranking
from storage.termindex import SESSION_TERMS_VERSION, append_session_terms, rank_chunks, rank_messages
from storage.textfold import fold, highlight
from storage.uploads import Quota, receive, store

log = logging.getLogger(__name__)

# Candidates each ranking brings to the fusion: 3x the hits asked for, at least this many.
MIN_CANDIDATES = 30
SEARCH_MODES = (storage_pb2.SEARCH_MODE_HYBRID, storage_pb2.SEARCH_MODE_LEXICAL, storage_pb2.SEARCH_MODE_VECTOR)
# What a search hit shows, fetched with the ranking that found it.
HIT_COLUMNS = "c.id, c.document_id, c.text, c.page, c.heading"
DEFAULT_TOP_K = 8
MAX_TOP_K = 100
MAX_QUERY_CHARS = 2000
MAX_MESSAGE_CHARS = 200_000
MAX_MESSAGES_PER_APPEND = 100
# Up to this many of a user's chunks, vector search is exact (a scan of their rows); above, HNSW.
EXACT_SEARCH_MAX_CHUNKS = 20_000
# Candidates an HNSW scan keeps (hnsw.ef_search): 4x the rows asked for, within these bounds.
HNSW_MIN_EF_SEARCH = 100
HNSW_MAX_EF_SEARCH = 1000
# A search without a query_embedding embeds its query: at most this long (and half the caller's time
# left); after a failure, searches stay keyword-only for the back-off before asking again.
QUERY_EMBED_TIMEOUT_S = 2.0
QUERY_EMBED_BACKOFF_S = 5.0
# Characters of a hit's highlighted snippet.
SNIPPET_CHARS = 240
TERMINAL = (storage_pb2.FILE_STATUS_READY, storage_pb2.FILE_STATUS_FAILED)

FILE_SELECT = """
    SELECT f.id, f.file_name, f.created_at, d.kind, d.size_bytes, d.sha256, d.status, d.error,
           d.error_reason, d.error_args,
           d.chunks_done, d.chunks_total, greatest(d.updated_at, f.created_at) AS updated_at
    FROM uploaded_files f JOIN documents d ON d.id = f.document_id
"""
SESSION_COLUMNS = "id, title, agent_id, message_count, created_at, updated_at, last_message_at"
MESSAGE_COLUMNS = "id, session_id, role, content, citations, agent_id, backend, created_at, seq"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    _set_ts(stamp, value)
    return stamp


def _set_ts(stamp: Timestamp, value: datetime) -> None:
    # Every column is timestamptz, so asyncpg gives timezone-aware datetimes. Timestamp.FromDatetime
    # goes through utctimetuple and calendar.timegm: a third of the CPU of listing a page of sessions.
    since = value - _EPOCH
    stamp.seconds = since.days * 86_400 + since.seconds
    stamp.nanos = since.microseconds * 1000


def _user(row: asyncpg.Record) -> storage_pb2.User:
    return storage_pb2.User(
        user_id=str(row["id"]),
        email=row["email"],
        display_name=row["display_name"],
        active=row["active"],
        created_at=_ts(row["created_at"]),
    )


def _file(row: asyncpg.Record) -> storage_pb2.File:
    return storage_pb2.File(
        file_id=str(row["id"]),
        file_name=row["file_name"],
        kind=row["kind"],
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        status=row["status"],
        error=row["error"],
        error_reason=row["error_reason"],
        error_args=json.loads(row["error_args"]),
        chunks_done=row["chunks_done"],
        chunks_total=row["chunks_total"],
        created_at=_ts(row["created_at"]),
        updated_at=_ts(row["updated_at"]),
    )


def _session(row: asyncpg.Record) -> storage_pb2.Session:
    session = storage_pb2.Session()
    _fill_session(session, row)
    return session


def _fill_session(session: storage_pb2.Session, row: asyncpg.Record) -> None:
    """``row`` written into ``session`` in place: a page of sessions is built inside its response,
    since building each Session and Timestamp first and handing them over copies every one again
    (a page of 20 took about 100 us that way, 60 us this way)."""
    session.session_id = str(row["id"])
    session.title = row["title"]
    session.agent_id = row["agent_id"]
    session.message_count = row["message_count"]
    for name in ("created_at", "updated_at", "last_message_at"):
        value = row[name]
        if value is not None:
            _set_ts(getattr(session, name), value)


def _message(row: asyncpg.Record) -> storage_pb2.Message:
    citations = [json_format.ParseDict(c, common_pb2.Citation()) for c in json.loads(row["citations"])]
    return storage_pb2.Message(
        message_id=str(row["id"]),
        session_id=str(row["session_id"]),
        role=row["role"],
        content=row["content"],
        citations=citations,
        agent_id=row["agent_id"],
        backend=row["backend"],
        created_at=_ts(row["created_at"]),
    )


def _clean_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field} is longer than {limit} characters")
    return value.replace("\x00", "")  # PostgreSQL text cannot hold NUL


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        ingestor: Ingestor,
        *,
        upload_max_bytes: int,
        embedding_dim: int,
        quota: Quota | None = None,
        embeddings: EmbeddingClient | None = None,
        hnsw_iterative_scan: bool = False,
        ranking: Ranking | None = None,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.ingestor = ingestor
        self.upload_max_bytes = upload_max_bytes
        self.quota = quota
        self.embedding_dim = embedding_dim
        # Embeds the query of a search that came without a vector (a browser through the gateway).
        self.embeddings = embeddings
        self.hnsw_iterative_scan = hnsw_iterative_scan
        self.ranking = ranking or Ranking(vector_weight=DEFAULT_VECTOR_WEIGHT)
        # While the embedding service is away, searches go keyword-only without asking it each time.
        self._embed_retry_at = 0.0

    # ------------------------------------------------------------------ users

    async def CreateUser(
        self, request: storage_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.User:
        email = request.email.strip()
        if not email or "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
            raise InvalidArgument("email is not a valid address")
        if not request.password_hash:
            raise InvalidArgument("password_hash is required")
        display_name = _clean_text(request.display_name.strip(), "display_name", 200)
        if request.HasField("first_sign_in"):
            accounts.parse_new_sign_in(request.first_sign_in)  # bad input refused before any write
        # One transaction with the first sign-in: a registration leaves an account only with its tokens.
        async with self.db.connection() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    "INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, $2, $3, $4) "
                    "RETURNING id, email, display_name, active, created_at",
                    uuid.uuid4(),
                    email,
                    display_name,
                    _clean_text(request.password_hash, "password_hash", 1000),
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("a user with this email already exists", reason="EMAIL_TAKEN") from None
            assert row is not None  # INSERT ... RETURNING always returns the row
            if request.HasField("first_sign_in"):
                await accounts.start_sign_in(conn, row["id"], request.first_sign_in)
        return _user(row)

    async def GetAccount(
        self, request: storage_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Account:
        user_id = caller(context)
        async with self.db.connection() as conn:
            row = await accounts.account(conn, user_id, request.ended_within_s)
        if row is None:
            raise NotFound("user not found")
        return storage_pb2.Account(user=_user(row), role=row["role"], ended_sign_in_ids=[str(i) for i in row["ended"]])

    async def CreateSignIn(
        self, request: storage_pb2.CreateSignInRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.CreateSignInResponse:
        user_id = caller(context)
        async with self.db.connection() as conn, conn.transaction():
            if not await conn.fetchval("SELECT active FROM users WHERE id = $1", user_id):
                raise NotFound("user not found")
            await accounts.start_sign_in(conn, user_id, request.sign_in)
        return storage_pb2.CreateSignInResponse()

    async def RotateRefreshToken(
        self, request: storage_pb2.RotateRefreshTokenRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.RotateRefreshTokenResponse:
        user_id = caller(context)
        old = accounts.token_hash(request.refresh_token_hash, "refresh_token_hash")
        new = accounts.token_hash(request.new_refresh_token_hash, "new_refresh_token_hash")
        outcome, sign_in_id = await accounts.rotate(self.db, user_id, old, new, accounts.ttl(request.ttl_s))
        reply = storage_pb2.RotateRefreshTokenResponse(outcome=outcome, sign_in_id=str(sign_in_id or ""))
        if outcome == storage_pb2.REFRESH_OUTCOME_ROTATED:
            async with self.db.connection() as conn:
                row = await accounts.account(conn, user_id, 0)
            if row is not None:
                reply.account.CopyFrom(storage_pb2.Account(user=_user(row), role=row["role"]))
        return reply

    async def EndSignIn(
        self, request: storage_pb2.EndSignInRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.EndSignInResponse:
        user_id = caller(context)
        token = accounts.token_hash(request.refresh_token_hash, "refresh_token_hash")
        sign_in_id = await accounts.end_by_token(self.db, user_id, token)
        return storage_pb2.EndSignInResponse(sign_in_id=str(sign_in_id or ""))

    async def GetUserByEmail(
        self, request: storage_pb2.GetUserByEmailRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.UserCredentials:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, email, display_name, active, created_at, password_hash, role FROM users "
                "WHERE lower(email) = lower($1)",
                request.email.strip()[:254],
            )
        if row is None:
            raise NotFound("no user with this email")
        return storage_pb2.UserCredentials(user=_user(row), password_hash=row["password_hash"], role=row["role"])

    async def GetUser(self, request: storage_pb2.GetUserRequest, context: grpc.aio.ServicerContext) -> storage_pb2.User:
        user_id = caller(context)
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT id, email, display_name, active, created_at FROM users WHERE id = $1", user_id
            )
        if row is None:
            raise NotFound("user not found")
        return _user(row)

    # ------------------------------------------------------------------ files

    async def UploadFile(
        self, request_iterator: AsyncIterator[storage_pb2.UploadFileRequest], context: grpc.aio.ServicerContext
    ) -> storage_pb2.File:
        user_id = caller(context)
        received = await receive(request_iterator, self.blobs, self.upload_max_bytes)
        stored = await store(self.db, self.blobs, user_id, received, self.quota)
        self.ingestor.wake()
        file = await self._get_file(user_id, stored.file_id)
        file.merged = stored.merged
        return file

    async def _get_file(self, user_id: uuid.UUID, file_id: uuid.UUID) -> storage_pb2.File:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                FILE_SELECT + " WHERE f.id = $1 AND f.user_id = $2 AND f.deleted_at IS NULL", file_id, user_id
            )
        if row is None:
            raise NotFound("file not found")
        return _file(row)

    async def GetFile(self, request: storage_pb2.GetFileRequest, context: grpc.aio.ServicerContext) -> storage_pb2.File:
        user_id = caller(context)
        return await self._get_file(user_id, parse_id(request.file_id, "file_id"))

    async def ListFiles(
        self, request: storage_pb2.ListFilesRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListFilesResponse:
        rows, token = await newest_first(
            self.db,
            FILE_SELECT + " WHERE f.user_id = $1 AND f.deleted_at IS NULL",
            caller(context),
            time_column="f.created_at",
            id_column="f.id",
            requested_size=request.page_size,
            page_token=request.page_token,
        )
        return storage_pb2.ListFilesResponse(files=[_file(r) for r in rows], next_page_token=token)

    async def DeleteFile(
        self, request: storage_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.DeleteFileResponse:
        user_id = caller(context)
        file_id = parse_id(request.file_id, "file_id")
        async with self.db.connection() as conn:
            deleted = await conn.fetchval(
                "UPDATE uploaded_files SET deleted_at = now() WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL "
                "RETURNING id",
                file_id,
                user_id,
            )
        if deleted is None:
            raise NotFound("file not found")
        return storage_pb2.DeleteFileResponse()

    async def WatchFile(
        self, request: storage_pb2.GetFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[storage_pb2.File]:
        user_id = caller(context)
        file_id = parse_id(request.file_id, "file_id")
        last: tuple[Any, ...] | None = None
        while True:
            current = await self._get_file(user_id, file_id)
            state = (current.status, current.chunks_done, current.chunks_total, current.error)
            if state != last:
                last = state
                yield current
            if current.status in TERMINAL:
                return
            # Woken by this process's ingestion at once; the timeout covers other replicas' work.
            async with self.ingestor.progress:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ingestor.progress.wait(), timeout=1.0)

    async def ListFileChunks(
        self, request: storage_pb2.ListFileChunksRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListFileChunksResponse:
        user_id = caller(context)
        file_id = parse_id(request.file_id, "file_id")
        async with self.db.connection() as conn:
            response = await list_file_chunks(conn, user_id, file_id, request)
        response.file.CopyFrom(await self._get_file(user_id, file_id))
        return response

    async def DownloadFile(
        self, request: storage_pb2.DownloadFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        user_id = caller(context)
        file_id = parse_id(request.file_id, "file_id")
        async with self.db.connection() as conn:
            file = await owned_file(conn, user_id, file_id)
        await context.send_initial_metadata(((FILE_NAME_METADATA, file.file_name.encode()),))
        content_type = media_type(file.kind)
        sent = False
        async for piece in read_blob(self.blobs, file.blob_name):
            # The content type goes with the first piece only (google.api.HttpBody streaming).
            yield httpbody_pb2.HttpBody(content_type="" if sent else content_type, data=piece)
            sent = True
        if not sent:  # an empty file: one message still says what it is
            yield httpbody_pb2.HttpBody(content_type=content_type)

    async def GetDocumentSetVersion(
        self, request: storage_pb2.GetDocumentSetVersionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.DocumentSetVersion:
        user_id = caller(context)
        async with self.db.connection() as conn:
            version = await conn.fetchval(
                "SELECT md5(coalesce(string_agg(f.id::text || ':' || d.id::text, ',' ORDER BY f.id), '')) "
                "FROM uploaded_files f JOIN documents d ON d.id = f.document_id "
                "WHERE f.user_id = $1 AND f.deleted_at IS NULL AND d.status = $2",
                user_id,
                storage_pb2.FILE_STATUS_READY,
            )
        return storage_pb2.DocumentSetVersion(version=str(version))

    # ------------------------------------------------------------------ retrieval

    async def SearchChunks(
        self, request: storage_pb2.SearchChunksRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.SearchChunksResponse:
        user_id = caller(context)
        if len(request.query) > MAX_QUERY_CHARS:
            raise InvalidArgument(f"query is longer than {MAX_QUERY_CHARS} characters")
        if request.top_k < 0:
            raise InvalidArgument("top_k must not be negative")
        top_k = min(request.top_k or DEFAULT_TOP_K, MAX_TOP_K)
        embedding: np.ndarray | None = None
        if request.query_embedding:
            if len(request.query_embedding) != self.embedding_dim:
                raise InvalidArgument(f"query_embedding must have {self.embedding_dim} values")
            embedding = np.asarray(request.query_embedding, dtype=np.float32)
            if not np.all(np.isfinite(embedding)) or not np.any(embedding):
                raise InvalidArgument("query_embedding must be finite and non-zero")
        mode = request.mode or storage_pb2.SEARCH_MODE_HYBRID
        if mode not in SEARCH_MODES:
            raise InvalidArgument("mode is not a known SearchMode")
        terms = query_terms(request.query)
        if mode == storage_pb2.SEARCH_MODE_LEXICAL:
            embedding = None
        if embedding is None and not query_words(request.query):
            raise InvalidArgument("give a query with words or a query_embedding")
        if embedding is None and not terms and mode != storage_pb2.SEARCH_MODE_VECTOR:
            # Only stop words ("là gì", "what is"): nothing in it identifies a passage.
            return storage_pb2.SearchChunksResponse()
        if embedding is None and mode != storage_pb2.SEARCH_MODE_LEXICAL:
            embedding = await self._embed_query(request.query, context)
        if mode == storage_pb2.SEARCH_MODE_VECTOR:
            if embedding is None:
                raise Unavailable("vector search needs the embedding service, which is not answering")
            ranked_terms: list[str] = []
        else:
            ranked_terms = terms
        file_ids = [parse_id(f, "file_ids") for f in request.file_ids]
        candidates = max(top_k * 3, MIN_CANDIDATES)
        async with self.db.connection() as conn:
            files = await conn.fetch(
                "SELECT f.id, f.file_name, f.document_id, d.chunks_done, d.status, "
                "length(d.chunk_lengths) / 2 AS term_chunks, d.term_total FROM uploaded_files f "
                "JOIN documents d ON d.id = f.document_id WHERE f.user_id = $1 AND f.deleted_at IS NULL "
                "AND ($2::uuid[] IS NULL OR f.id = ANY($2::uuid[]))",
                user_id,
                file_ids or None,
            )
            if file_ids and len({r["id"] for r in files}) != len(set(file_ids)):
                raise NotFound("file not found")
            ready = [r for r in files if r["status"] == storage_pb2.FILE_STATUS_READY]
            if not ready:
                return storage_pb2.SearchChunksResponse()
        by_document = {r["document_id"]: r for r in ready}
        documents = list(by_document)
        # The two rankings run at once, each on a connection of its own taken after the one above is
        # given back (a search never holds one connection while it waits for another: 32 searches
        # holding one each and waiting for a second starved a 20-connection pool). PostgreSQL walks
        # the vector index while this process ranks by BM25: a hybrid search takes the longer of
        # the two, not their sum. The vector ranking brings its candidates' rows along; the lexical
        # one fetches its winners' rows after ranking.
        lexical: asyncio.Future[tuple[dict[uuid.UUID, float], list[asyncpg.Record], dict[str, float]]] | None = None
        vector: asyncio.Future[list[asyncpg.Record]] | None = None
        if embedding is not None and (mode == storage_pb2.SEARCH_MODE_VECTOR or self.ranking.vector_weight > 0):
            vector = asyncio.ensure_future(self._vector_candidates(user_id, documents, embedding, candidates, ready))
        try:
            if ranked_terms:
                lexical = asyncio.ensure_future(
                    self._lexical_candidates(user_id, list(by_document.values()), ranked_terms, candidates)
                )
            lexical_scores, lexical_rows, weights = await lexical if lexical is not None else ({}, [], {})
            vector_rows = await vector if vector is not None else []
        finally:
            for task in (lexical, vector):
                if task is not None and not task.done():
                    task.cancel()
        vector_scores = {r["id"]: 1.0 - float(r["distance"]) for r in vector_rows}
        by_id = {r["id"]: r for r in (*vector_rows, *lexical_rows)}
        fused = self.ranking.fuse(lexical_scores, vector_scores)[:top_k]
        marks = highlight_words(terms)
        # Without the lexical ranking's statistics (vector mode) every term weighs the same.
        weights = weights or dict.fromkeys(terms, 1.0)
        hits: list[storage_pb2.ChunkHit] = []
        for chunk_id, score in fused:
            row = by_id[chunk_id]
            file_row = by_document[row["document_id"]]
            hits.append(
                storage_pb2.ChunkHit(
                    chunk_id=str(chunk_id),
                    file_id=str(file_row["id"]),
                    file_name=file_row["file_name"],
                    page=row["page"],
                    heading=row["heading"],
                    text=row["text"],
                    snippet=highlight(row["text"], marks, width=SNIPPET_CHARS),
                    score=score,
                    vector_score=vector_scores.get(chunk_id, 0.0),
                    text_score=lexical_scores.get(chunk_id, 0.0),
                    query_coverage=coverage(weights, row["text"]),
                )
            )
        return storage_pb2.SearchChunksResponse(hits=hits)

    async def _lexical_candidates(
        self, user_id: uuid.UUID, ready: list[asyncpg.Record], terms: list[str], limit: int
    ) -> tuple[dict[uuid.UUID, float], list[asyncpg.Record], dict[str, float]]:
        """The best ``limit`` chunks of the ready documents by BM25: their scores and rows, and the
        terms' idf over those documents."""
        stats = [
            {"id": r["document_id"], "term_chunks": r["term_chunks"], "term_total": r["term_total"]} for r in ready
        ]
        scores: dict[uuid.UUID, float] = {}
        async with self.db.connection() as conn:
            scored, weights = await rank_chunks(conn, user_id, stats, terms, limit)
            if not scored:
                return scores, [], weights
            rows = await conn.fetch(
                f"SELECT DISTINCT ON (c.document_id, c.chunk_index) {HIT_COLUMNS}, c.chunk_index "
                "FROM chunks c JOIN unnest($2::uuid[], $3::integer[]) AS k(document_id, chunk_index) "
                "ON c.document_id = k.document_id AND c.chunk_index = k.chunk_index WHERE c.user_id = $1",
                user_id,
                [s.owner for s in scored],
                [s.item for s in scored],
            )
        by_place = {(r["document_id"], r["chunk_index"]): r for r in rows}
        for s in scored:
            found = by_place.get((s.owner, s.item))
            if found is not None:
                scores[found["id"]] = s.score
        return scores, rows, weights

    async def _vector_candidates(
        self,
        user_id: uuid.UUID,
        documents: list[uuid.UUID],
        embedding: np.ndarray,
        limit: int,
        ready: list[asyncpg.Record],
    ) -> list[asyncpg.Record]:
        async with self.db.connection() as conn:
            return await _vector_search(
                conn,
                user_id,
                documents,
                embedding,
                limit,
                sum(r["chunks_done"] for r in ready),
                session_ef_search=self.db.hnsw_ef_search,
                iterative_scan=self.hnsw_iterative_scan,
            )

    async def _embed_query(self, query: str, context: grpc.aio.ServicerContext) -> np.ndarray | None:
        """The query's vector from the embedding service, or None (keyword search only) without one."""
        if self.embeddings is None or time.monotonic() < self._embed_retry_at:
            return None
        timeout = QUERY_EMBED_TIMEOUT_S
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining * 0.5)
        try:
            # For the caller, not for storage: the query is the student's own (studyassist.core.identity).
            vectors, _ = await self.embeddings.embed([query], deadline_s=timeout, user_id=str(caller(context)))
        except (grpc.aio.AioRpcError, EmbeddingError) as exc:
            self._embed_retry_at = time.monotonic() + QUERY_EMBED_BACKOFF_S
            reason = f"{exc.code().name} {exc.details() or ''}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            log.warning(
                "embedding service unavailable: searching by keywords only",
                extra={"fields": {"error": reason.strip()[:300], "retry_in_s": QUERY_EMBED_BACKOFF_S}},
            )
            return None
        vector: np.ndarray = vectors[0]
        if len(vector) != self.embedding_dim or not np.all(np.isfinite(vector)) or not np.any(vector):
            log.warning(
                "the embedding service's query vector does not fit the stored chunks: keywords only",
                extra={"fields": {"dimension": len(vector), "expected": self.embedding_dim}},
            )
            return None
        return vector

    # ------------------------------------------------------------------ sessions and messages

    async def CreateSession(
        self, request: storage_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Session:
        user_id = caller(context)
        try:
            async with self.db.connection() as conn:
                row = await conn.fetchrow(
                    "INSERT INTO chat_sessions (id, user_id, title, agent_id, terms_version) "
                    f"VALUES ($1, $2, $3, $4, $5) "
                    f"RETURNING {SESSION_COLUMNS}",
                    uuid.uuid4(),
                    user_id,
                    _clean_text(request.title.strip(), "title", 300),
                    _clean_text(request.agent_id, "agent_id", 100),
                    SESSION_TERMS_VERSION,
                )
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("user not found") from None
        assert row is not None  # INSERT ... RETURNING always returns the row
        return _session(row)

    async def ListSessions(
        self, request: storage_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListSessionsResponse:
        rows, token = await newest_first(
            self.db,
            f"SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE user_id = $1",
            caller(context),
            time_column="updated_at",
            id_column="id",
            requested_size=request.page_size,
            page_token=request.page_token,
        )
        response = storage_pb2.ListSessionsResponse(next_page_token=token)
        for row in rows:
            _fill_session(response.sessions.add(), row)
        return response

    async def GetSession(
        self, request: storage_pb2.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Session:
        user_id = caller(context)
        session_id = parse_id(request.session_id, "session_id")
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = $1 AND user_id = $2", session_id, user_id
            )
        if row is None:
            raise NotFound("session not found")
        return _session(row)

    async def UpdateSession(
        self, request: storage_pb2.UpdateSessionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Session:
        user_id = caller(context)
        session_id = parse_id(request.session_id, "session_id")
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                f"UPDATE chat_sessions SET title = $3, updated_at = now() WHERE id = $1 AND user_id = $2 "
                f"RETURNING {SESSION_COLUMNS}",
                session_id,
                user_id,
                _clean_text(request.title.strip(), "title", 300),
            )
        if row is None:
            raise NotFound("session not found")
        return _session(row)

    async def DeleteSession(
        self, request: storage_pb2.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.DeleteSessionResponse:
        user_id = caller(context)
        session_id = parse_id(request.session_id, "session_id")
        async with self.db.connection() as conn:
            deleted = await conn.fetchval(
                "DELETE FROM chat_sessions WHERE id = $1 AND user_id = $2 RETURNING id", session_id, user_id
            )
        if deleted is None:
            raise NotFound("session not found")
        return storage_pb2.DeleteSessionResponse()

    async def ListMessages(
        self, request: storage_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListMessagesResponse:
        user_id = caller(context)
        session_id = parse_id(request.session_id, "session_id")
        size = page_size(request.page_size)
        after = decode_token(request.page_token, 1)
        after_seq = 0
        if after is not None:
            if not isinstance(after[0], int):
                raise InvalidArgument("page_token is not valid")
            after_seq = after[0]
        async with self.db.connection() as conn:
            owned = await conn.fetchval(
                "SELECT 1 FROM chat_sessions WHERE id = $1 AND user_id = $2", session_id, user_id
            )
            if owned is None:
                raise NotFound("session not found")
            rows = await conn.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1 AND user_id = $2 AND seq > $3 "
                "ORDER BY seq LIMIT $4",
                session_id,
                user_id,
                after_seq,
                size + 1,
            )
        page, token = split_page(rows, size, lambda last: [last["seq"]])
        return storage_pb2.ListMessagesResponse(messages=[_message(r) for r in page], next_page_token=token)

    async def AppendMessages(
        self, request: storage_pb2.AppendMessagesRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.AppendMessagesResponse:
        user_id = caller(context)
        session_id = parse_id(request.session_id, "session_id")
        if not request.messages:
            raise InvalidArgument("messages must not be empty")
        if len(request.messages) > MAX_MESSAGES_PER_APPEND:
            raise InvalidArgument(f"at most {MAX_MESSAGES_PER_APPEND} messages per call")
        values = []
        for message in request.messages:
            if message.role not in (storage_pb2.ROLE_USER, storage_pb2.ROLE_ASSISTANT):
                raise InvalidArgument("message role must be ROLE_USER or ROLE_ASSISTANT")
            content = _clean_text(message.content, "content", MAX_MESSAGE_CHARS)
            citations = json.dumps(
                [json_format.MessageToDict(c, preserving_proto_field_name=True) for c in message.citations],
                ensure_ascii=False,
            ).replace("\\u0000", "")
            values.append(
                (
                    uuid.uuid4(),
                    session_id,
                    user_id,
                    message.role,
                    content,
                    fold(content),
                    citations,
                    _clean_text(message.agent_id, "agent_id", 100),
                    _clean_text(message.backend, "backend", 200),
                )
            )
        title = _clean_text(request.title.strip(), "title", 300)
        # Numbered from 0 here; shifted to the session's next position under its row lock.
        # The index holds what history search should find (storage.message_text: no stock sentences).
        postings = build_postings([searchable_text(value[3], value[4]) for value in values])
        async with self.db.connection() as conn, conn.transaction():
            first_position = await conn.fetchval(
                "SELECT message_count FROM chat_sessions WHERE id = $1 AND user_id = $2 FOR UPDATE", session_id, user_id
            )
            if first_position is None:
                raise NotFound("session not found")
            rows: list[asyncpg.Record] = []
            for offset, value in enumerate(values):
                rows.append(
                    await conn.fetchrow(  # type: ignore[arg-type]  # INSERT ... RETURNING: never None
                        "INSERT INTO messages (id, session_id, user_id, role, content, content_folded, citations, "
                        "agent_id, backend, position, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, "
                        f"$10, clock_timestamp()) RETURNING {MESSAGE_COLUMNS}",
                        *value,
                        first_position + offset,
                    )
                )
            await append_session_terms(conn, session_id, user_id, postings.with_offset(first_position))
            await conn.execute(
                "UPDATE chat_sessions SET message_count = message_count + $2, last_message_at = $3, "
                "updated_at = $3, title = CASE WHEN title = '' THEN $4 ELSE title END WHERE id = $1",
                session_id,
                len(rows),
                rows[-1]["created_at"],
                title,
            )
        return storage_pb2.AppendMessagesResponse(messages=[_message(r) for r in rows])

    async def SearchMessages(
        self, request: storage_pb2.SearchMessagesRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.SearchMessagesResponse:
        user_id = caller(context)
        if len(request.query) > MAX_QUERY_CHARS:
            raise InvalidArgument(f"query is longer than {MAX_QUERY_CHARS} characters")
        if not query_words(request.query):
            raise InvalidArgument("query must contain a word")
        terms = query_terms(request.query)
        size = page_size(request.page_size)
        async with self.db.connection() as conn:
            scored = await rank_messages(conn, user_id, terms, size)
            if not scored:
                return storage_pb2.SearchMessagesResponse()
            rows = await conn.fetch(
                "SELECT m.id, m.session_id, m.role, m.content, m.citations, m.agent_id, m.backend, m.created_at, "
                "m.seq, m.position, s.title FROM messages m JOIN chat_sessions s ON s.id = m.session_id "
                "JOIN unnest($2::uuid[], $3::integer[]) AS k(session_id, position) "
                "ON m.session_id = k.session_id AND m.position = k.position "
                "WHERE m.user_id = $1 AND s.user_id = $1",
                user_id,
                [s.owner for s in scored],
                [s.item for s in scored],
            )
        by_place = {(r["session_id"], r["position"]): r for r in rows}
        marks = highlight_words(terms)
        hits = []
        for found in scored:
            row = by_place.get((found.owner, found.item))
            if row is None:
                continue
            hits.append(
                storage_pb2.MessageHit(
                    message=_message(row),
                    session_title=row["title"],
                    highlighted=highlight(searchable_text(row["role"], row["content"]), marks),
                    score=found.score,
                )
            )
        return storage_pb2.SearchMessagesResponse(hits=hits)


async def _vector_search(
    conn: Connection,
    user_id: uuid.UUID,
    documents: list[uuid.UUID],
    embedding: np.ndarray,
    limit: int,
    total_chunks: int,
    *,
    session_ef_search: int,
    iterative_scan: bool = False,
) -> list[asyncpg.Record]:
    """Cosine top-k over the user's chunks of ``documents``, nearest first (HIT_COLUMNS and distance):
    exact for small collections, HNSW for large.

    The user and file filters are part of the index scan's WHERE. pgvector applies them to the rows
    the index yields; before 0.8 an index scan yields at most ``hnsw.ef_search`` rows, so a selective
    filter can leave fewer than ``limit``: the exact query then answers. With ``iterative_scan``
    (pgvector >= 0.8) the scan goes on until enough rows pass the filters.
    """
    if total_chunks > EXACT_SEARCH_MAX_CHUNKS:
        # relaxed_order may yield rows slightly out of order: the outer query sorts the page.
        query = (
            "WITH near AS MATERIALIZED ("
            f" SELECT {HIT_COLUMNS}, c.embedding <=> $2 AS distance FROM chunks c"
            " WHERE c.user_id = $1 AND c.document_id = ANY($3::uuid[])"
            " ORDER BY c.embedding <=> $2 LIMIT $4) "
            "SELECT * FROM near ORDER BY distance + 0"
        )
        ef_search = max(HNSW_MIN_EF_SEARCH, min(HNSW_MAX_EF_SEARCH, limit * 4))
        if ef_search <= session_ef_search:
            # Every pooled connection starts with this much (and with the iterative scan where
            # pgvector has it): one statement, one round trip.
            rows = await conn.fetch(query, user_id, embedding, documents, limit)
        else:
            async with conn.transaction():
                settings = f"SET LOCAL hnsw.ef_search = {ef_search}"
                if iterative_scan:
                    settings += "; SET LOCAL hnsw.iterative_scan = relaxed_order"
                await conn.execute(settings)
                rows = await conn.fetch(query, user_id, embedding, documents, limit)
        if len(rows) >= min(limit, total_chunks):
            return _with_direction(rows)
    # "+ 0" stops the planner from using the (global, post-filtered) HNSW index: an exact scan of
    # one user's rows is complete, and at this size faster.
    rows = await conn.fetch(
        f"SELECT {HIT_COLUMNS}, (c.embedding <=> $2) AS distance FROM chunks c "
        "WHERE c.user_id = $1 AND c.document_id = ANY($3::uuid[]) ORDER BY (c.embedding <=> $2) + 0 LIMIT $4",
        user_id,
        embedding,
        documents,
        limit,
    )
    return _with_direction(rows)


def _with_direction(rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
    """Drops rows whose distance is NaN (a zero vector has no direction)."""
    return [r for r in rows if not math.isnan(r["distance"])]
