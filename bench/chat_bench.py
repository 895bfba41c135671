"""Chat relay overhead against the same LLM server called directly with the same prompt.

Starts the real mesh pieces chat needs (embedded PostgreSQL, embedding, storage, chat) and a real
OpenAI-compatible server (`transformers serve` on a tiny random Llama built on disk), with a TCP
relay in front of the LLM that records each request body and when each token left the server.

- TTFT: StreamChat (session, embedding, hybrid search, prompt, LLM) vs the same prompt replayed
  straight to the LLM server with the same SDK; overhead = chat - direct, per pair.
- Per-token relay overhead: for each token, client arrival minus the moment the relay saw it
  leave the LLM server, through chat vs direct (the baseline: SDK parsing only).
- N concurrent streams through chat vs N concurrent direct streams of the same prompt.
- Response cache: a repeated question (hit) vs the first ask (miss).

    python -m bench.chat_bench            # 40 TTFT pairs, 200 concurrent streams
    python -m bench.chat_bench --quick    # 10 pairs, 50 streams
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.embeddedpg import start_embedded_postgres
from studyassist.core.testing import ServiceProcess, spawn_service
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from bench.report import record
from tests.chat.tinyllm import LlmServer, Relay, build_tiny_llm, start_llm_server

NOTES = (
    "# Sorting\n\nQuicksort picks a pivot, partitions the array around it and sorts both sides; "
    "average O(n log n), worst O(n^2). Merge sort splits in halves and merges, always O(n log n) "
    "and stable. Heapsort builds a max-heap and extracts the maximum n times.\n"
)
AGENTS = """
[[agents]]
id = "bench"
name_vi = "Bench"
name_en = "Bench"
description_vi = "Bench"
description_en = "Bench"
instructions_vi = "Trả lời ngắn gọn."
instructions_en = "Answer briefly."
[agents.retrieval]
top_k = 4
[agents.sampling]
temperature = 0.7
top_p = 0.95
max_tokens = %d
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def line(name: str, values: list[float], unit: str = "ms") -> str:
    return (
        f"  {name:<34} p50 {pct(values, 50):8.2f}  p95 {pct(values, 95):8.2f}  p99 {pct(values, 99):8.2f} {unit}"
        f"  (n={len(values)})"
    )


async def direct_stream(client: AsyncOpenAI, body: dict[str, Any]) -> tuple[float, list[float]]:
    """TTFT (ms) and token arrival times of one direct streamed completion."""
    started = time.monotonic()
    first = 0.0
    arrivals: list[float] = []
    stream = await client.chat.completions.create(**{**body, "stream": True})
    async with stream:
        async for chunk in stream:
            if any(c.delta and c.delta.content for c in chunk.choices):
                now = time.monotonic()
                first = first or now
                arrivals.append(now)
    return (first - started) * 1000, arrivals


RETRIEVAL_MS: list[float] = []


async def chat_stream(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, user: str, question: str
) -> tuple[float, list[float], str]:
    """TTFT (ms), token arrival times and backend of one StreamChat (chat's retrieval ms to RETRIEVAL_MS)."""
    started = time.monotonic()
    first = 0.0
    arrivals: list[float] = []
    backend = ""
    call = chat.StreamChat(
        chat_pb2.ChatRequest(agent_id="bench", message=question), metadata=user_metadata(user), timeout=300
    )
    async for event in call:
        if event.HasField("started"):
            backend = event.started.backend
        elif event.HasField("delta"):
            now = time.monotonic()
            first = first or now
            arrivals.append(now)
        elif event.HasField("done"):
            RETRIEVAL_MS.append(event.done.timings.retrieval_ms)
    return (first - started) * 1000, arrivals, backend


def relay_overheads(arrivals: list[float], relayed: list[float]) -> list[float]:
    # Chat forwards every non-empty delta as one event, so the i-th arrival is the i-th token.
    return [(a - r) * 1000 for a, r in zip(arrivals, relayed, strict=False)]


async def upload(storage: storage_pb2_grpc.StorageServiceAsyncStub, user: str) -> None:
    async def parts() -> AsyncIterator[storage_pb2.UploadFileRequest]:
        yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name="sorting.md"))
        yield storage_pb2.UploadFileRequest(chunk=NOTES.encode())

    file = await storage.UploadFile(parts(), metadata=user_metadata(user), timeout=60)
    while file.status not in (storage_pb2.FILE_STATUS_READY, storage_pb2.FILE_STATUS_FAILED):
        await asyncio.sleep(0.2)
        file = await storage.GetFile(storage_pb2.GetFileRequest(file_id=file.file_id), metadata=user_metadata(user))
    if file.status != storage_pb2.FILE_STATUS_READY:
        raise RuntimeError(f"upload failed: {file.error}")


async def run(
    chat_addr: str, storage_addr: str, llm: LlmServer, chat_relay: Relay, direct_relay: Relay, pairs: int, streams: int
) -> None:
    chat_channel = create_channel(chat_addr, default_timeout=300)
    storage_channel = create_channel(storage_addr)
    chat = chat_pb2_grpc.ChatServiceStub(chat_channel)
    storage = storage_pb2_grpc.StorageServiceStub(storage_channel)
    direct = AsyncOpenAI(base_url=direct_relay.base_url, api_key="not-needed", max_retries=0, timeout=300)
    user = (
        await storage.CreateUser(
            storage_pb2.CreateUserRequest(email=f"b{uuid.uuid4().hex[:10]}@ptit.edu.vn", password_hash="$argon2id$x")
        )
    ).user_id
    await upload(storage, user)

    # Warm-up: first requests load code paths and connections on every side.
    for i in range(3):
        await chat_stream(chat, user, f"How does quicksort work? warm-up {i}")

    ttft_chat: list[float] = []
    ttft_direct: list[float] = []
    ttft_overhead: list[float] = []
    added_chat: list[float] = []
    added_direct: list[float] = []
    added_overhead: list[float] = []
    token_chat: list[float] = []
    token_direct: list[float] = []
    answer_chat: list[float] = []
    before_llm: list[float] = []
    backend = ""
    RETRIEVAL_MS.clear()
    for i in range(pairs):
        # A different question each time: the response cache must not answer.
        question = f"How does quicksort partition the array? ({i})"
        asked = time.monotonic()
        chat_ttft, chat_arrivals, backend = await chat_stream(chat, user, question)
        answer_chat.append((time.monotonic() - asked) * 1000)
        [upstream] = [c for c in chat_relay.completions_since(asked) if c.request_bodies]
        body = json.loads(upstream.request_bodies[-1])
        chat_tokens = upstream.token_times[-len(chat_arrivals) :]
        token_chat += relay_overheads(chat_arrivals, chat_tokens)
        # What chat adds, free of the LLM's own (noisy) time to first token: the client's TTFT
        # minus the time between the request reaching the LLM and its first token leaving it.
        chat_added = chat_ttft - (chat_tokens[0] - upstream.completion_at) * 1000
        before_llm.append((upstream.completion_at - asked) * 1000)

        asked = time.monotonic()
        direct_ttft, direct_arrivals = await direct_stream(direct, body)
        [replayed] = direct_relay.completions_since(asked)
        direct_tokens = replayed.token_times[-len(direct_arrivals) :]
        token_direct += relay_overheads(direct_arrivals, direct_tokens)
        direct_added = direct_ttft - (direct_tokens[0] - replayed.completion_at) * 1000
        added_chat.append(chat_added)
        added_direct.append(direct_added)
        added_overhead.append(chat_added - direct_added)
        ttft_chat.append(chat_ttft)
        ttft_direct.append(direct_ttft)
        ttft_overhead.append(chat_ttft - direct_ttft)

    print(f"backend: {backend}; model server: transformers serve (tiny random Llama, CPU)")
    print(f"Time to first token, {pairs} pairs, same prompt (chat adds session, embedding, search, save):")
    print(line("direct to LLM server (baseline)", ttft_direct))
    print(line("through chat", ttft_chat))
    print(line("overhead (chat - direct, per pair)", ttft_overhead))
    print("Time to first token minus the LLM server's own time to first token (what the caller's side adds):")
    print(line("direct SDK call (baseline)", added_direct))
    print(line("through chat", added_chat))
    print(line("overhead (chat - direct, per pair)", added_overhead))
    print("  of which, inside chat before its LLM request leaves (session, embedding, search, prompt):")
    print(line("  call start -> LLM request", before_llm))
    print(line("  search (chat's retrieval_ms)", RETRIEVAL_MS[-len(before_llm) :]))
    print("Per-token relay overhead (client arrival - token left the LLM server):")
    print(line("direct SDK stream (baseline)", token_direct))
    print(line("through chat (gRPC stream)", token_chat))
    token_overhead = {q: pct(token_chat, q) - pct(token_direct, q) for q in (50, 95, 99)}
    print(
        "  overhead (chat - direct, same percentile)"
        + "".join(f"  p{q} {value:6.2f}" for q, value in token_overhead.items())
        + " ms"
    )
    print(line("streamed answer complete, through chat", answer_chat))
    record(
        "ttft_overhead",
        pct(added_overhead, 95),
        f"p95 {pct(added_overhead, 95):.1f} ms (chat {pct(added_chat, 95):.1f} ms beyond the LLM's own first token)",
        f"direct SDK call {pct(added_direct, 95):.1f} ms",
    )
    record(
        "token_overhead",
        token_overhead[99],
        f"p99 {token_overhead[99]:.2f} ms (through chat p99 {pct(token_chat, 99):.2f} ms, n={len(token_chat)})",
        f"direct SDK stream p99 {pct(token_direct, 99):.2f} ms",
    )
    record(
        "chat_complex",
        pct(answer_chat, 95),
        f"p95 {pct(answer_chat, 95):.0f} ms (embedding, hybrid search, tiny LLM on CPU)",
        f"same prompt straight to the LLM: first token p95 {pct(ttft_direct, 95):.0f} ms",
    )

    # N concurrent streams.
    async def one_chat(i: int) -> float:
        started = time.monotonic()
        _, arrivals, _ = await chat_stream(chat, user, f"What is merge sort? concurrent {i}")
        if not arrivals:
            raise RuntimeError("no tokens")
        return (time.monotonic() - started) * 1000

    async def one_direct(i: int) -> float:
        started = time.monotonic()
        _, arrivals = await direct_stream(direct, body)
        if not arrivals:
            raise RuntimeError("no tokens")
        return (time.monotonic() - started) * 1000

    walls: dict[str, float] = {}
    for name, fn in (("direct to LLM server (baseline)", one_direct), ("through chat", one_chat)):
        started = time.monotonic()
        results = await asyncio.gather(*(fn(i) for i in range(streams)), return_exceptions=True)
        wall = walls[name] = time.monotonic() - started
        ok = [r for r in results if isinstance(r, float)]
        errors = [r for r in results if not isinstance(r, float)]
        print(f"{streams} concurrent streams, {name}: {len(errors)} errors, wall {wall:.1f} s")
        if ok:
            print(line("  stream duration", ok))
        if errors:
            print(f"    first error: {errors[0]!r}")
    record(
        "chat_streams",
        streams - len(errors),
        f"{streams} at once, {len(errors)} errors, all done in {walls['through chat']:.1f} s",
        f"direct to the LLM server: {walls['direct to LLM server (baseline)']:.1f} s",
    )

    # Response cache: the same question again (new session each time).
    misses: list[float] = []
    hits: list[float] = []
    for i in range(max(5, pairs // 2)):
        ask = chat_pb2.ChatRequest(agent_id="bench", message=f"Is merge sort stable? ({i})")
        for bucket in (misses, hits):
            started = time.monotonic()
            response = await chat.Chat(ask, metadata=user_metadata(user), timeout=300)
            bucket.append((time.monotonic() - started) * 1000)
            if bucket is hits and not response.cached:
                raise RuntimeError("the repeated question was not a cache hit")
    print("Chat (unary), whole answer:")
    print(line("first ask, LLM answers (baseline)", misses))
    print(line("same question again, cache hit", hits))
    record(
        "chat_simple",
        pct(misses, 95),
        f"p95 {pct(misses, 95):.0f} ms (LLM answers, max_tokens set by the agent)",
        "",
    )
    record("cache_hit", pct(hits, 95), f"p95 {pct(hits, 95):.1f} ms", f"first ask p95 {pct(misses, 95):.0f} ms")

    await direct.close()
    await chat_channel.close(None)
    await storage_channel.close(None)


@contextmanager
def patched_environ(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    pairs, streams = (10, 50) if args.quick else (40, 200)

    work = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    processes: list[ServiceProcess] = []
    pg = start_embedded_postgres(Path("/tmp") / f"cb-pg-{uuid.uuid4().hex[:8]}", cleanup_mode="delete")
    llm: LlmServer | None = None
    relays: list[Relay] = []
    try:
        build_tiny_llm(work / "model")
        # The LLM stand-in shares this machine's cores with the mesh it is measured through (a real
        # model runs on its own hardware): one torch thread, so its spinning OpenMP workers do not
        # take every core from the relay path between tokens.
        with patched_environ(OMP_NUM_THREADS=os.environ.get("BENCH_LLM_THREADS", "1")):
            llm = start_llm_server(work / "model", work / "serve.log")
        chat_relay, direct_relay = Relay(llm.port, record=True), Relay(llm.port, record=True)
        relays = [chat_relay, direct_relay]
        for relay in relays:
            relay.start()
        agents = work / "agents.toml"
        agents.write_text(AGENTS % args.max_tokens, encoding="utf-8")
        quiet = {"REDIS_URL": "", "LOG_LEVEL": "warning"}
        embedding = spawn_service("embedding", {"EMBEDDING_PORT": "0", **quiet, "LOG_LEVEL": "info"})
        processes.append(embedding)
        storage = spawn_service(
            "storage",
            {
                "STORAGE_PORT": "0",
                "DATABASE_URL": pg.get_uri(),
                "EMBEDDING_ADDR": embedding.address,
                "BLOB_DIR": str(work / "blobs"),
                **quiet,
                "LOG_LEVEL": "info",
            },
        )
        processes.append(storage)
        chat = spawn_service(
            "chat",
            {
                "CHAT_PORT": "0",
                "STORAGE_ADDR": storage.address,
                "EMBEDDING_ADDR": embedding.address,
                "LLM_BASE_URL": chat_relay.base_url,
                "CHAT_AGENTS_FILE": str(agents),
                **quiet,
                "LOG_LEVEL": "info",
            },
        )
        processes.append(chat)
        print(f"chat_bench: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, max_tokens {args.max_tokens}")
        # This process holds torch and transformers (from building the model): a full garbage collection
        # here walks all their objects and stops the clients and the relays for 100 ms or more, landing
        # in whichever stream was running, chat's or the direct baseline's.
        gc.collect()
        gc.freeze()
        asyncio.run(run(chat.address, storage.address, llm, chat_relay, direct_relay, pairs, streams))
    finally:
        for process in reversed(processes):
            process.stop()
        for relay in relays:
            relay.stop()
        if llm is not None:
            llm.process.terminate()
            llm.process.wait(15)
        pg.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
