"""BM25 through the storage service: per-user statistics, filters, deletes, bad queries, the
re-indexer for rows that predate the index, and message search on the same ranking."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from storage.db import connect
from storage.termindex import Reindexer
from studyassist.core.channels import user_metadata
from studyassist.storage.v1 import storage_pb2

from tests.storage.conftest import StorageClient

STACK = "Ngăn xếp (stack) hoạt động theo nguyên tắc vào sau ra trước: phần tử thêm vào sau cùng được lấy ra đầu tiên."
QUEUE = "Hàng đợi (queue) hoạt động theo nguyên tắc vào trước ra trước: phần tử được thêm ở cuối, lấy ra ở đầu."
TREE = "Cây nhị phân tìm kiếm giữ khóa nhỏ hơn ở cây con trái. Nút lá là nút không có con nào."
GRAPH = "Đồ thị có hướng gồm các đỉnh và các cung; thuật toán Dijkstra là thuật toán tìm đường đi ngắn nhất."


async def ready(storage: StorageClient, user: str, name: str, text: str) -> str:
    file = await storage.upload(user, name, text.encode())
    done = await storage.wait_done(user, file.file_id)
    assert done.status == storage_pb2.FILE_STATUS_READY, done.error
    return file.file_id


async def lexical(
    storage: StorageClient, user: str, query: str, file_ids: list[str] | None = None
) -> list[storage_pb2.ChunkHit]:
    response = await storage.stub.SearchChunks(
        storage_pb2.SearchChunksRequest(query=query, mode=storage_pb2.SEARCH_MODE_LEXICAL, file_ids=file_ids or []),
        metadata=user_metadata(user),
    )
    return list(response.hits)


def scores(hits: list[storage_pb2.ChunkHit]) -> dict[str, float]:
    return {h.file_id: round(h.text_score, 6) for h in hits}


async def test_statistics_are_the_callers_own_and_follow_filters_and_deletes(storage: StorageClient) -> None:
    alice, bob = await storage.new_user(), await storage.new_user()
    stack = await ready(storage, alice, "stack.txt", STACK)
    queue = await ready(storage, alice, "queue.txt", QUEUE)
    await ready(storage, alice, "tree.txt", TREE)
    before = await lexical(storage, alice, "ngăn xếp vào sau ra trước")
    # The rare syllables decide: the stack passage first, then the queue one ("ra trước" only).
    assert [h.file_id for h in before] == [stack, queue]
    assert before[0].text_score > before[1].text_score > 0

    # Bob's many documents holding the same words change nothing of Alice's scores.
    for i in range(4):
        await ready(storage, bob, f"b{i}.txt", f"Ngăn xếp số {i}: ngăn xếp vào sau ra trước, ngăn xếp.")
    assert scores(await lexical(storage, alice, "ngăn xếp vào sau ra trước")) == scores(before)
    bob_hits = await lexical(storage, bob, "ngăn xếp vào sau ra trước")
    assert len(bob_hits) == 4 and not {h.file_id for h in bob_hits} & {stack, queue}

    # A filter scopes the statistics too: searching the stack file alone is searching a collection
    # of one passage, and deleting the others makes the unfiltered search the same collection.
    only_stack = scores(await lexical(storage, alice, "ngăn xếp vào sau ra trước", [stack]))
    assert set(only_stack) == {stack} and only_stack[stack] != scores(before)[stack]
    me = user_metadata(alice)
    listed = (await storage.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=me)).files
    for file in listed:
        if file.file_id != stack:
            await storage.stub.DeleteFile(storage_pb2.DeleteFileRequest(file_id=file.file_id), metadata=me)
    assert scores(await lexical(storage, alice, "ngăn xếp vào sau ra trước")) == only_stack

    # Another user's file in the filter: NOT_FOUND, never its chunks or its statistics.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await lexical(storage, alice, "ngăn xếp", [bob_hits[0].file_id])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_queries_get_a_clear_error_or_nothing(storage: StorageClient) -> None:
    user = await storage.new_user()
    tree = await ready(storage, user, "tree.txt", TREE)
    me = user_metadata(user)

    async def code(request: storage_pb2.SearchChunksRequest) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await storage.stub.SearchChunks(request, metadata=me)
        return err.value.code()

    # Stop words only: nothing in the query identifies a passage (not every passage holding "là").
    assert await lexical(storage, user, "là gì") == []
    hybrid = await storage.stub.SearchChunks(storage_pb2.SearchChunksRequest(query="là gì vậy?"), metadata=me)
    assert not hybrid.hits
    assert await code(storage_pb2.SearchChunksRequest(query="cây " * 2500)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code(storage_pb2.SearchChunksRequest(query="?!… —— ***")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code(storage_pb2.SearchChunksRequest(query="cây", mode=7)) == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[arg-type]
    # A script the material does not use: no match, no error.
    assert await lexical(storage, user, "二叉树 дерево") == []
    # A long query within the limit is bounded to its first terms, and still finds the passage.
    long_query = "nút lá " + " ".join(f"từ{i}" for i in range(300))
    assert [h.file_id for h in await lexical(storage, user, long_query)] == [tree]


async def test_a_query_typed_with_diacritics_keeps_what_they_say(storage: StorageClient) -> None:
    user = await storage.new_user()
    leaf = await ready(storage, user, "leaf.txt", TREE)
    await ready(storage, user, "graph.txt", GRAPH)
    # "lá" (leaf) is not the stop word "là" (is): typed with diacritics it counts.
    hits = await lexical(storage, user, "nút lá")
    assert hits[0].file_id == leaf
    assert "<mark>lá</mark>" in hits[0].snippet and "<mark>Nút</mark>" in hits[0].snippet
    # Typed without, the words still find it (through "nut la" and "nut").
    assert (await lexical(storage, user, "nut la"))[0].file_id == leaf


async def test_documents_and_sessions_from_before_the_index_are_indexed_at_start(
    storage: StorageClient, database_url: str
) -> None:
    user = await storage.new_user()
    stack = await ready(storage, user, "stack.txt", STACK)
    me = user_metadata(user)
    session = await storage.stub.CreateSession(storage_pb2.CreateSessionRequest(), metadata=me)
    await storage.stub.AppendMessages(
        storage_pb2.AppendMessagesRequest(
            session_id=session.session_id,
            messages=[storage_pb2.Message(role=storage_pb2.ROLE_USER, content="Giải thích thuật toán Dijkstra")],
        ),
        metadata=me,
    )
    # As migration 0003 leaves a database that had these rows: no index, terms_version 0.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DELETE FROM chunk_terms WHERE user_id = $1", uuid.UUID(user))
        await conn.execute("DELETE FROM message_terms WHERE user_id = $1", uuid.UUID(user))
        await conn.execute(
            "UPDATE documents SET terms_version = 0, chunk_lengths = '', term_total = 0 WHERE user_id = $1",
            uuid.UUID(user),
        )
        await conn.execute(
            "UPDATE chat_sessions SET terms_version = 0, message_lengths = '', term_total = 0 WHERE user_id = $1",
            uuid.UUID(user),
        )
    finally:
        await conn.close()
    assert await lexical(storage, user, "ngăn xếp") == []
    found = await storage.stub.SearchMessages(storage_pb2.SearchMessagesRequest(query="dijkstra"), metadata=me)
    assert not found.hits

    db = await connect(database_url, min_size=1, max_size=2, acquire_timeout_s=5)
    try:
        reindexer = Reindexer(db, storage_pb2.FILE_STATUS_READY)
        assert await reindexer.run_once() >= 2
        assert await reindexer.run_once() == 0  # nothing left: indexed at the current version
    finally:
        await db.close()
    assert [h.file_id for h in await lexical(storage, user, "ngăn xếp")] == [stack]
    found = await storage.stub.SearchMessages(storage_pb2.SearchMessagesRequest(query="dijkstra"), metadata=me)
    assert [h.message.content for h in found.hits] == ["Giải thích thuật toán Dijkstra"]


async def test_message_search_ranks_by_bm25_per_user(storage: StorageClient) -> None:
    alice, bob = await storage.new_user(), await storage.new_user()

    async def say(user: str, *contents: str) -> None:
        me = user_metadata(user)
        session = await storage.stub.CreateSession(storage_pb2.CreateSessionRequest(), metadata=me)
        for content in contents:  # one append each: positions follow on across appends
            await storage.stub.AppendMessages(
                storage_pb2.AppendMessagesRequest(
                    session_id=session.session_id,
                    messages=[storage_pb2.Message(role=storage_pb2.ROLE_USER, content=content)],
                ),
                metadata=me,
            )

    topics = ["tham lam", "quay lui", "chia để trị", "quy hoạch động", "sắp xếp chèn", "tìm kiếm nhị phân"]
    await say(alice, *[f"Thuật toán {topic} là gì?" for topic in topics], "Sắp xếp nhanh (quicksort) chọn chốt")
    await say(alice, "Thuật toán Dijkstra tìm đường đi ngắn nhất")
    await say(bob, *["quicksort quicksort chốt"] * 5)

    async def search(user: str, query: str) -> list[str]:
        found = await storage.stub.SearchMessages(
            storage_pb2.SearchMessagesRequest(query=query), metadata=user_metadata(user)
        )
        return [h.message.content for h in found.hits]

    # "thuật toán" is in seven of Alice's eight messages, "quicksort" in one: the rare word leads.
    found = await search(alice, "thuật toán quicksort")
    assert found[0] == "Sắp xếp nhanh (quicksort) chọn chốt" and len(found) == 8
    assert await search(alice, "là gì") == []
    assert all(content == "quicksort quicksort chốt" for content in await search(bob, "quicksort"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await search(alice, "?!")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_hybrid_searches_do_not_starve_a_small_pool(storage_factory: object) -> None:
    # Each hybrid search runs its two rankings on two connections at once; holding one while
    # waiting for the other would deadlock searches against each other in a pool this small.
    async with storage_factory(DB_POOL_MIN="1", DB_POOL_MAX="2") as storage:  # type: ignore[operator]
        user = await storage.new_user()
        await ready(storage, user, "stack.txt", STACK)
        await ready(storage, user, "queue.txt", QUEUE)
        me = user_metadata(user)

        async def one() -> int:
            response = await storage.stub.SearchChunks(
                storage_pb2.SearchChunksRequest(query="ngăn xếp vào sau ra trước", top_k=5), metadata=me, timeout=20
            )
            return len(response.hits)

        assert all(found > 0 for found in await asyncio.gather(*(one() for _ in range(16))))
