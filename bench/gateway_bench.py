"""Gateway benchmark: REST through gateway -> storage -> PostgreSQL, beside a bare Starlette app.

1. List sessions (GET /v1/sessions, 20 sessions, authenticated) at 100 concurrent keep-alive
   clients: p50/p95/p99 and throughput, beside a bare Starlette+uvicorn endpoint returning the
   same JSON bytes, measured by the same load generator in the same run.
2. Upload: the same bytes streamed (1 MiB writes, chunked) to POST /v1/files through the gateway
   into storage, beside posting them to a bare endpoint that discards them.

Every server is its own process (uvloop, httptools); the load generator is a small raw
HTTP/1.1 keep-alive client so it costs less CPU than the servers it measures.

    python -m bench.gateway_bench            # 15 s per load phase, 5 x 40 MB uploads
    python -m bench.gateway_bench --quick    # 3 s per phase, 2 x 10 MB uploads
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvloop
from studyassist.core.embeddedpg import start_embedded_postgres
from studyassist.core.testing import ServiceProcess, create_database, spawn_service

from bench.report import record

DEAD = "127.0.0.1:9"
CONCURRENCY = 100


# ---- the bare baseline server (run as a child: python -m bench.gateway_bench --serve-bare FILE)


def serve_bare(body_file: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    body = Path(body_file).read_bytes()

    async def sessions(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async def discard(request: Request) -> Response:
        size = 0
        async for piece in request.stream():
            size += len(piece)
        return JSONResponse({"size_bytes": str(size)})

    app = Starlette(routes=[Route("/sessions", sessions), Route("/discard", discard, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(json.dumps({"msg": "serving", "port": sock.getsockname()[1]}), file=sys.stderr, flush=True)
    config = uvicorn.Config(app, http="httptools", loop="none", log_config=None, access_log=False)
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


def serve_memory_storage() -> None:
    """An in-memory StorageService (the gateway tests' backend): the gateway's own ceiling."""
    from tests.gateway.backend import start_storage

    async def main() -> None:
        server, _, address = await start_storage()
        print(json.dumps({"msg": "serving", "port": int(address.rsplit(":", 1)[1])}), file=sys.stderr, flush=True)
        await server.grpc_server.wait_for_termination()

    uvloop.run(main())


# ---- load generator


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def load(port: int, path: str, headers: dict[str, str], seconds: float, warmup: float) -> dict[str, float]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    ).encode()
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                writer.write(request)
                status = await _read_response(reader)
                done = time.perf_counter()
                if sent >= measure_from:
                    if status == 200:
                        latencies.append(done - sent)
                    else:
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "rps": len(latencies) / seconds,
        "p50": q[49] * 1000,
        "p95": q[94] * 1000,
        "p99": q[98] * 1000,
        "errors": errors,
        "n": len(latencies),
    }


async def grpc_list(address: str, user_id: str, seconds: float, warmup: float) -> dict[str, float]:
    """The same read straight to storage over gRPC: what the gateway adds on top of it."""
    from studyassist.core.channels import create_channel, user_metadata
    from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

    channel = create_channel(address)
    stub = storage_pb2_grpc.StorageServiceStub(channel)
    metadata = user_metadata(user_id)
    latencies: list[float] = []
    measure_from = time.perf_counter() + warmup
    stop_at = measure_from + seconds

    async def client() -> None:
        while (sent := time.perf_counter()) < stop_at:
            await stub.ListSessions(storage_pb2.ListSessionsRequest(page_size=20), metadata=metadata)
            if sent >= measure_from:
                latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    await channel.close(None)
    q = statistics.quantiles(sorted(latencies), n=100)
    return {"rps": len(latencies) / seconds, "p50": q[49] * 1000, "p95": q[94] * 1000, "p99": q[98] * 1000, "errors": 0}


async def grpc_upload(stub: Any, user_id: str, total: int) -> float:
    """The same upload straight to storage over gRPC, on a channel the caller keeps open (as the gateway does)."""
    from studyassist.core.channels import user_metadata
    from studyassist.storage.v1 import storage_pb2

    async def messages() -> AsyncIterator[storage_pb2.UploadFileRequest]:
        yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name="direct.txt"))
        for chunk in _body_pieces(total):
            yield storage_pb2.UploadFileRequest(chunk=chunk)

    started = time.perf_counter()
    await stub.UploadFile(messages(), metadata=user_metadata(user_id))
    return total / (time.perf_counter() - started) / 1e6


def _text_piece() -> bytes:
    # Text (storage sniffs the content and accepts documents only); ASCII so any cut is valid UTF-8.
    line = b"Dijkstra finds shortest paths from one source in a graph with non-negative weights.\n"
    return (line * (1024 * 1024 // len(line) + 1))[: 1024 * 1024]


def _body_pieces(total: int) -> Iterator[bytes]:
    """``total`` bytes of text in 1 MiB pieces, different on every call: each upload stores a new
    document (rename, row, job) rather than finding the same bytes already stored."""
    piece = _text_piece()
    tag = f"upload {uuid.uuid4().hex}\n".encode()
    sent = 0
    while sent < total:
        chunk = piece[: min(len(piece), total - sent)]
        if sent == 0:
            chunk = (tag + chunk[len(tag) :])[: len(chunk)]
        sent += len(chunk)
        yield chunk


def plain_write(path: Path, total: int) -> float:
    """Baseline: the same bytes written to a plain file and fsynced, in this process, on the same disk."""
    started = time.perf_counter()
    with open(path, "wb") as f:
        for chunk in _body_pieces(total):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    rate = total / (time.perf_counter() - started) / 1e6
    path.unlink()
    return rate


async def upload(url: str, headers: dict[str, str], total: int) -> tuple[float, httpx.Response]:
    async def body() -> AsyncIterator[bytes]:
        for chunk in _body_pieces(total):
            yield chunk

    async with httpx.AsyncClient(timeout=120) as http:
        started = time.perf_counter()
        reply = await http.post(url, content=body(), headers=headers)
        elapsed = time.perf_counter() - started
    return total / elapsed / 1e6, reply


async def sse_streams(
    port: int, path: str, headers: dict[str, str], count: int, hold_s: float, pid: int
) -> tuple[str, int]:
    """Open ``count`` SSE streams at once, hold them; the report and how many stayed open."""
    import psutil

    gateway = psutil.Process(pid)
    before = gateway.memory_info().rss
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    ).encode()
    opening = asyncio.Semaphore(100)
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors = 0

    async def open_one() -> None:
        nonlocal errors
        try:
            async with opening:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                if int(head[9:12]) != 200:
                    raise RuntimeError(head[:40])
                first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 60)
                if b"data: " not in first:
                    raise RuntimeError(first[:40])
                streams.append((reader, writer))
        except (OSError, RuntimeError, TimeoutError, asyncio.IncompleteReadError):
            errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(count)))
    opened_in = time.perf_counter() - started
    await asyncio.sleep(hold_s)
    during = gateway.memory_info().rss
    closed_early = sum(1 for reader, _ in streams if reader.at_eof())
    for _, writer in streams:
        writer.close()
    held = len(streams) - closed_early if errors == 0 else 0
    return (
        f"SSE: {count} concurrent streams (WatchFile), held {hold_s:.0f} s: {len(streams)} open in {opened_in:.1f} s, "
        f"errors {errors}, closed early {closed_early}\n"
        f"  gateway RSS {before / 2**20:.0f} MiB -> {during / 2**20:.0f} MiB "
        f"(+{(during - before) / 2**20:.0f} MiB, {(during - before) / max(1, len(streams)) / 1024:.0f} KiB per stream)",
        held,
    )


async def gateway_over_memory_storage(tmp: Path, seconds: float, warmup: float) -> dict[str, float]:
    """A second gateway in front of the in-memory backend: what the gateway itself can do."""
    memory = await asyncio.to_thread(spawn_service, "bench.gateway_bench", {"BENCH_ROLE": "memory-storage"})
    gateway = await asyncio.to_thread(
        spawn_service,
        "gateway",
        {
            "GATEWAY_PORT": "0",
            "STORAGE_ADDR": memory.address,
            "CHAT_ADDR": DEAD,
            "METRICS_ADDR": DEAD,
            "DATA_DIR": str(tmp / "gw-mem"),
            "REDIS_URL": "",
            "RATE_LIMIT_PER_MINUTE": "0",
            "RATE_LIMIT_IP_PER_MINUTE": "0",
        },
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://{gateway.address}", timeout=30) as http:
            reply = await http.post(
                "/v1/auth/register", json={"email": "mem@example.edu.vn", "password": "benchmark!", "display_name": "M"}
            )
            auth = {"Authorization": f"Bearer {reply.json()['access_token']}"}
            for i in range(20):
                await http.post("/v1/sessions", json={"title": f"Phiên học {i}"}, headers=auth)
        return await load(gateway.port, "/v1/sessions?page_size=20", auth, seconds, warmup)
    finally:
        gateway.stop()
        memory.stop()


# ---- the run


def start_stack(tmp: Path) -> tuple[list[ServiceProcess], object]:

    pg = start_embedded_postgres(Path("/tmp") / f"sa-gwb-{uuid.uuid4().hex[:8]}", cleanup_mode="delete")
    database_url = asyncio.run(create_database(pg.get_uri(), f"bench_{uuid.uuid4().hex[:8]}"))
    quiet = {"REDIS_URL": "", "LOG_LEVEL": "info"}
    storage = spawn_service(
        "storage",
        {
            **quiet,
            "STORAGE_PORT": "0",
            "DATABASE_URL": database_url,
            "EMBEDDING_ADDR": DEAD,
            "INGEST_WORKERS": "0",
            "BLOB_DIR": str(tmp / "blobs"),
            "UPLOAD_MAX_BYTES": str(1 << 30),
        },
    )
    gateway = spawn_service(
        "gateway",
        {
            **quiet,
            "GATEWAY_PORT": "0",
            "STORAGE_ADDR": storage.address,
            "CHAT_ADDR": DEAD,
            "METRICS_ADDR": DEAD,
            "DATA_DIR": str(tmp / "gw"),
            "RATE_LIMIT_PER_MINUTE": "0",
            "RATE_LIMIT_IP_PER_MINUTE": "0",
            "UPLOAD_MAX_BYTES": str(1 << 30),
        },
    )
    return [storage, gateway], pg


async def run(quick: bool, seconds: float, tmp: Path, storage: ServiceProcess, gateway: ServiceProcess) -> str:
    warmup = 1.0 if quick else 3.0
    uploads, upload_mb = (2, 10) if quick else (5, 40)
    sse_count = 100 if quick else 1000
    base = f"http://{gateway.address}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        reply = await http.post(
            "/v1/auth/register",
            json={
                "email": f"bench-{uuid.uuid4().hex[:6]}@example.edu.vn",
                "password": "benchmark!",
                "display_name": "B",
            },
        )
        token = reply.json()["access_token"]
        user_id = reply.json()["user"]["user_id"]
        auth = {"Authorization": f"Bearer {token}"}
        for i in range(20):
            await http.post("/v1/sessions", json={"title": f"Phiên học {i}"}, headers=auth)
        sample = await http.get("/v1/sessions", params={"page_size": "20"}, headers=auth)
        assert sample.status_code == 200 and len(sample.json()["sessions"]) == 20, sample.text
    body_file = tmp / "sessions.json"
    body_file.write_bytes(sample.content)
    bare = await asyncio.to_thread(
        spawn_service, "bench.gateway_bench", {"BENCH_BARE_BODY": str(body_file), "BENCH_ROLE": "bare"}
    )
    try:
        phase = f"{seconds:.0f} s (+{warmup:.0f} s warm-up)"
        lines = [f"list sessions, {CONCURRENCY} concurrent keep-alive clients, {phase}"]
        lines.append(f"response: {len(sample.content)} bytes JSON (20 sessions)")
        bare_stats = await load(bare.port, "/sessions", {}, seconds, warmup)
        gw_stats = await load(gateway.port, "/v1/sessions?page_size=20", auth, seconds, warmup)
        direct_stats = await grpc_list(storage.address, user_id, seconds, warmup)
        memory_stats = await gateway_over_memory_storage(tmp, seconds, warmup)
        for label, s in (
            ("bare Starlette JSON (baseline)", bare_stats),
            ("gateway -> storage -> PostgreSQL", gw_stats),
            ("direct gRPC -> storage (no gateway)", direct_stats),
            ("gateway -> in-memory storage stand-in", memory_stats),
        ):
            lines.append(
                f"  {label:36s} {s['rps']:8.0f} req/s  p50 {s['p50']:6.1f} ms  p95 {s['p95']:6.1f} ms"
                f"  p99 {s['p99']:6.1f} ms  errors {s['errors']:.0f}"
            )
        lines.append(
            f"  gateway throughput / baseline: {gw_stats['rps'] / bare_stats['rps']:.2f}x (with PostgreSQL), "
            f"{memory_stats['rps'] / bare_stats['rps']:.2f}x (gateway alone, in-memory backend)"
        )
        read = f"p95 {gw_stats['p95']:.1f} ms, {gw_stats['rps']:.0f} req/s, {gw_stats['errors']:.0f} errors"
        bare_read = f"bare Starlette JSON p95 {bare_stats['p95']:.1f} ms, {bare_stats['rps']:.0f} req/s"
        record("api_read_p95", gw_stats["p95"], read, bare_read)
        record("api_read_p95_strict", gw_stats["p95"], read, bare_read)
        ratio = gw_stats["rps"] / bare_stats["rps"]
        record(
            "api_read_ratio",
            ratio,
            f"{ratio:.2f}x ({gw_stats['rps']:.0f} req/s)",
            f"{bare_stats['rps']:.0f} req/s bare; direct gRPC to storage {direct_stats['rps']:.0f} req/s",
        )

        total = upload_mb * 1_000_000
        bare_rates, gw_rates, direct_rates, plain_rates = [], [], [], []
        from studyassist.core.channels import create_channel
        from studyassist.storage.v1 import storage_pb2_grpc

        direct_channel = create_channel(storage.address, default_timeout=120)
        direct = storage_pb2_grpc.StorageServiceStub(direct_channel)
        await grpc_upload(direct, user_id, 2_000_000)  # warm-up: connection and flow-control window
        for _ in range(uploads):
            plain_rates.append(await asyncio.to_thread(plain_write, tmp / "plain.bin", total))
            rate, reply = await upload(f"http://{bare.address}/discard", {}, total)
            assert reply.status_code == 200
            bare_rates.append(rate)
            rate, reply = await upload(
                f"{base}/v1/files?file_name=bench.txt", {**auth, "Content-Type": "text/plain"}, total
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["size_bytes"] == str(total)
            gw_rates.append(rate)
            direct_rates.append(await grpc_upload(direct, user_id, total))
        await direct_channel.close(None)
        lines.append(f"upload {upload_mb} MB x {uploads} of UTF-8 text, streamed in 1 MiB writes (median)")
        lines.append(f"  bare Starlette discard (baseline)    {statistics.median(bare_rates):8.1f} MB/s")
        lines.append(f"  gateway -> storage (blob on disk)    {statistics.median(gw_rates):8.1f} MB/s")
        lines.append(f"  plain write+fsync, same bytes (base) {statistics.median(plain_rates):8.1f} MB/s")
        lines.append(f"  direct gRPC -> storage (no gateway)  {statistics.median(direct_rates):8.1f} MB/s")
        through = statistics.median(gw_rates)
        upload_text = f"{through:.1f} MB/s ({upload_mb} MB text files, median of {uploads})"
        upload_base = (
            f"bare discard endpoint {statistics.median(bare_rates):.0f} MB/s; "
            f"direct gRPC {statistics.median(direct_rates):.0f} MB/s"
        )
        record("upload", through, upload_text, upload_base)
        record("upload_strict", through, upload_text, upload_base)

        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            queued = await http.post("/v1/files?file_name=watch.txt", content=_text_piece()[:4096], headers=auth)
        file_id = queued.json()["file_id"]
        hold_s = 5.0 if quick else 15.0
        report, held = await sse_streams(
            gateway.port, f"/v1/files/{file_id}:watch", auth, sse_count, hold_s, gateway.process.pid
        )
        lines.append(report)
        record("sse_streams", held, f"{held} of {sse_count} held {hold_s:.0f} s", "")
        return "\n".join(lines)
    finally:
        bare.stop()


def main() -> int:
    if os.environ.get("BENCH_ROLE") == "bare":
        serve_bare(os.environ["BENCH_BARE_BODY"])
        return 0
    if os.environ.get("BENCH_ROLE") == "memory-storage":
        serve_memory_storage()
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=0, help="seconds per load phase (default 15, quick 3)")
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 15.0)
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp_name:
        tmp = Path(tmp_name)
        services, pg = start_stack(tmp)
        try:
            print(uvloop.run(run(args.quick, seconds, tmp, services[0], services[1])))
        finally:
            for service in reversed(services):
                service.stop()
            pg.cleanup()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
