"""SearchChunks beyond the basics: the HNSW path with filters, query embedding, snippets."""

from __future__ import annotations

import time
import uuid

import asyncpg
import numpy as np
import pytest
from pgvector.asyncpg import register_vector
from storage import servicer as storage_servicer
from storage.db import HNSW_SESSION_EF_SEARCH, HNSW_SESSION_EF_SEARCH_DEFAULT_BUILD, connect, migrate
from studyassist.storage.v1 import storage_pb2

from tests.storage.conftest import StorageClient
from tests.storage.test_files import LECTURE, Embed, embed, search

__all__ = ["embed"]  # the fixture, imported so the tests here can use it

QUERY = "ngăn xếp vào sau ra trước"
SYNTHETIC_CHUNKS = 2000


async def add_synthetic_file(
    conn: asyncpg.Connection, user_id: str, name: str, vectors: np.ndarray
) -> tuple[str, set[uuid.UUID]]:
    """A ready file of ``len(vectors)`` chunks written straight to the tables (no keyword matches)."""
    document_id, file_id = uuid.uuid4(), uuid.uuid4()
    await conn.execute(
        "INSERT INTO documents (id, user_id, sha256, kind, size_bytes, blob_name, status, chunks_done, chunks_total) "
        "VALUES ($1, $2, $3, $4, 1, 'synthetic', $5, $6, $6)",
        document_id,
        uuid.UUID(user_id),
        document_id.hex,
        storage_pb2.FILE_KIND_TXT,
        storage_pb2.FILE_STATUS_READY,
        len(vectors),
    )
    await conn.execute(
        "INSERT INTO uploaded_files (id, user_id, document_id, file_name) VALUES ($1, $2, $3, $4)",
        file_id,
        uuid.UUID(user_id),
        document_id,
        name,
    )
    ids = [uuid.uuid4() for _ in range(len(vectors))]
    await conn.executemany(
        "INSERT INTO chunks (id, document_id, user_id, chunk_index, model, text, text_folded, char_start, char_end, "
        "embedding) VALUES ($1, $2, $3, $4, 'synthetic', 'filler', 'filler', 0, 6, $5)",
        [(ids[i], document_id, uuid.UUID(user_id), i, vectors[i]) for i in range(len(vectors))],
    )
    return str(file_id), set(ids)


def near(query: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Unit vectors about 0.9 cosine from ``query``: closer to it than any real passage."""
    rng = np.random.default_rng(seed)
    unit = query / np.linalg.norm(query)
    vectors: np.ndarray = unit + rng.standard_normal((count, len(unit))).astype(np.float32) * 0.025
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


@pytest.fixture
def hnsw_always(monkeypatch: pytest.MonkeyPatch) -> None:
    # The storage server runs in this process (conftest's storage fixture), so the module constant
    # decides: every search takes the HNSW branch.
    monkeypatch.setattr(storage_servicer, "EXACT_SEARCH_MAX_CHUNKS", 0)


async def test_hnsw_search_keeps_user_and_file_filters(
    hnsw_always: None, storage: StorageClient, embed: Embed, database_url: str
) -> None:
    alice, bob = await storage.new_user(), await storage.new_user()
    alice_notes = await storage.upload(alice, "alice.md", LECTURE.encode())
    bob_notes = await storage.upload(bob, "bob.md", LECTURE.encode())
    for user, file in ((alice, alice_notes), (bob, bob_notes)):
        assert (await storage.wait_done(user, file.file_id)).status == storage_pb2.FILE_STATUS_READY
    vector = await embed(QUERY)
    query = np.asarray(vector, dtype=np.float32)
    # Both users also have a large file whose chunks all lie nearer the query than the lecture:
    # the nearest rows of the global index are theirs, so a filter applied after a bounded index
    # scan finds none of the lecture's chunks.
    conn = await asyncpg.connect(database_url)
    try:
        await register_vector(conn)
        alice_big, alice_big_chunks = await add_synthetic_file(conn, alice, "a-big", near(query, SYNTHETIC_CHUNKS, 1))
        bob_big, _ = await add_synthetic_file(conn, bob, "b-big", near(query, SYNTHETIC_CHUNKS, 2))
        await conn.execute("ANALYZE chunks")
        # The index really is what the planner picks for a user's nearest rows here.
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT id FROM chunks WHERE user_id = $1 ORDER BY embedding <=> $2 LIMIT 100",
                uuid.UUID(alice),
                query,
            )
        )
        assert "chunks_embedding_hnsw" in plan
    finally:
        await conn.close()

    for user, notes, big, others in (
        (alice, alice_notes, alice_big, {bob_notes.file_id, bob_big}),
        (bob, bob_notes, bob_big, {alice_notes.file_id, alice_big}),
    ):
        # Limited to the lecture: its passage comes back, and only it.
        hits = await search(storage, user, "", vector=vector, file_ids=[notes.file_id])
        assert hits, "a file-limited HNSW search came back empty"
        assert {h.file_id for h in hits} == {notes.file_id}
        assert "Ngăn xếp" in hits[0].text and hits[0].vector_score > 0.3
        # Unlimited: a full page, all the caller's own, the big file's (nearer) chunks first.
        everything = await search(storage, user, "", vector=vector)
        assert len(everything) == storage_servicer.DEFAULT_TOP_K
        files = {h.file_id for h in everything}
        assert files == {big} and not files & others
        # A page wider than the connections' own hnsw.ef_search allows (SET LOCAL in a transaction).
        wide_k = HNSW_SESSION_EF_SEARCH // 4 + 5
        wide = await search(storage, user, "", vector=vector, top_k=wide_k)
        assert len(wide) == wide_k and {h.file_id for h in wide} == {big}

    # The HNSW page is (nearly) the exact top of the caller's own rows.
    conn = await asyncpg.connect(database_url)
    try:
        await register_vector(conn)
        exact = await conn.fetch(
            "SELECT id FROM chunks WHERE user_id = $1 ORDER BY (embedding <=> $2) + 0 LIMIT $3",
            uuid.UUID(alice),
            query,
            storage_servicer.DEFAULT_TOP_K,
        )
    finally:
        await conn.close()
    found = {uuid.UUID(h.chunk_id) for h in await search(storage, alice, "", vector=vector)}
    assert found <= alice_big_chunks
    assert len(found & {r["id"] for r in exact}) >= len(exact) - 1


async def test_pooled_connections_start_with_the_hnsw_search_settings(database_url: str) -> None:
    db = await connect(database_url, min_size=1, max_size=2, acquire_timeout_s=2)
    try:
        await migrate(db, embedding_dim=8)
        await db.tune_vector_search()
        # A new database's index is built by migration 0002: the narrower scan is enough.
        assert db.hnsw_ef_search == HNSW_SESSION_EF_SEARCH
        async with db.connection() as conn:
            assert await conn.fetchval("SHOW hnsw.ef_search") == str(HNSW_SESSION_EF_SEARCH)
            async with conn.transaction():
                await conn.execute("SET LOCAL hnsw.ef_search = 400")
        # A search's SET LOCAL ends with its transaction: the next user of the connection is unaffected.
        async with db.connection() as conn:
            assert await conn.fetchval("SHOW hnsw.ef_search") == str(HNSW_SESSION_EF_SEARCH)
    finally:
        await db.close()


async def test_an_index_of_pgvectors_default_build_is_searched_wider(database_url: str) -> None:
    # What a database that was large when migration 0002 arrived keeps.
    db = await connect(database_url, min_size=2, max_size=2, acquire_timeout_s=2)
    try:
        await migrate(db, embedding_dim=8)
        async with db.connection() as conn:
            await conn.execute("DROP INDEX chunks_embedding_hnsw")
            await conn.execute("CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)")
        await db.tune_vector_search()
        assert db.hnsw_ef_search == HNSW_SESSION_EF_SEARCH_DEFAULT_BUILD > HNSW_SESSION_EF_SEARCH
        for _ in range(3):  # every pooled connection, the ones open before included
            async with db.connection() as conn:
                assert await conn.fetchval("SHOW hnsw.ef_search") == str(HNSW_SESSION_EF_SEARCH_DEFAULT_BUILD)
        # Rebuilt as the README says, it is searched narrower again.
        async with db.connection() as conn:
            await conn.execute(
                "CREATE INDEX chunks_embedding_hnsw_new ON chunks USING hnsw (embedding vector_cosine_ops) "
                "WITH (m = 16, ef_construction = 128)"
            )
            await conn.execute("DROP INDEX chunks_embedding_hnsw")
            await conn.execute("ALTER INDEX chunks_embedding_hnsw_new RENAME TO chunks_embedding_hnsw")
        await db.tune_vector_search()
        async with db.connection() as conn:
            assert await conn.fetchval("SHOW hnsw.ef_search") == str(HNSW_SESSION_EF_SEARCH)
    finally:
        await db.close()


async def test_query_without_vector_is_embedded_and_hits_carry_snippets(storage: StorageClient) -> None:
    user = await storage.new_user()
    notes = await storage.upload(user, "notes.md", (LECTURE + "\n" + "Phụ lục. " * 80).encode())
    assert (await storage.wait_done(user, notes.file_id)).status == storage_pb2.FILE_STATUS_READY
    # No query_embedding (a browser through the gateway): storage embeds the words itself.
    hits = await search(storage, user, "ngan xep vao sau ra truoc")
    assert hits and hits[0].vector_score > 0 and hits[0].text_score > 0
    # The snippet: a short excerpt with the matched words marked; text stays the whole passage.
    top = hits[0]
    assert "<mark>Ngăn</mark> <mark>xếp</mark>" in top.snippet
    assert len(top.snippet.replace("<mark>", "").replace("</mark>", "")) <= storage_servicer.SNIPPET_CHARS + 2
    assert len(top.text) > len(top.snippet) and "<mark>" not in top.text
    # Words that match nothing still find the nearest passage by its vector, unmarked.
    vague = await search(storage, user, "zzzqqq")
    assert vague and all(h.text_score == 0 and h.vector_score != 0 for h in vague)
    assert "<mark>" not in vague[0].snippet and vague[0].snippet


async def test_search_falls_back_to_keywords_without_the_embedding_service(storage_factory: object) -> None:
    async with storage_factory() as storage:  # type: ignore[operator]
        user = await storage.new_user()
        notes = await storage.upload(user, "notes.md", LECTURE.encode())
        assert (await storage.wait_done(user, notes.file_id)).status == storage_pb2.FILE_STATUS_READY
    # A second replica on the same database whose embedding service is not there.
    async with storage_factory(EMBEDDING_ADDR="127.0.0.1:9", INGEST_WORKERS="0") as storage:  # type: ignore[operator]
        for _ in range(2):  # the second search does not wait on the embedding service again
            started = time.monotonic()
            hits = await search(storage, user, "ngăn xếp")
            assert time.monotonic() - started < storage_servicer.QUERY_EMBED_TIMEOUT_S + 1
            assert hits and hits[0].text_score > 0 and hits[0].vector_score == 0
            assert "<mark>Ngăn</mark>" in hits[0].snippet
        assert not await search(storage, user, "zzzqqq")
