"""Embedding service benchmark: every figure beside a baseline measured in the same run.

    .venv/bin/python -m bench.embedding_bench            # full run (a few minutes on 2 cores)
    .venv/bin/python -m bench.embedding_bench --quick    # smoke run: few texts, fp32 only

Figures, on the same Vietnamese and English texts of 128-256 tokens. The box may be shared, so
baseline and service rounds alternate and each figure is the median of its rounds:
- service throughput over gRPC (requests of 32 texts, a few in flight) vs in-process
  ``SentenceTransformer.encode(batch_size=32)``; the same for the int8 service and for the
  service on the torch runtime (on the CPU the service runs ONNX Runtime by default);
- 32 concurrent clients sending one text per request vs the same offline batch baseline;
- cache-hit latency (p50/p95 of one-text Embed calls for cached texts) vs an empty Info RPC;
- service RSS vs a bare python+torch process holding the same model (a subprocess).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil
from studyassist.core.channels import create_channel
from studyassist.core.testing import ServiceProcess, spawn_service
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from bench.report import record

VIETNAMESE = [
    "Học viện Công nghệ Bưu chính Viễn thông đào tạo kỹ sư công nghệ thông tin, điện tử và viễn thông.",
    "Mạng máy tính là tập hợp các thiết bị được kết nối để trao đổi dữ liệu và chia sẻ tài nguyên.",
    "Mô hình OSI chia quá trình truyền thông thành bảy tầng, mỗi tầng đảm nhận một chức năng riêng.",
    "Giao thức TCP bảo đảm dữ liệu đến đúng thứ tự, còn UDP gửi gói tin mà không cần thiết lập kết nối.",
    "Thuật toán sắp xếp nhanh chọn một phần tử chốt rồi chia mảng thành hai phần nhỏ hơn và lớn hơn.",
    "Cơ sở dữ liệu quan hệ lưu dữ liệu trong các bảng; khóa chính xác định duy nhất mỗi bản ghi.",
    "Hệ điều hành quản lý tiến trình, bộ nhớ, thiết bị vào ra và cung cấp giao diện cho người dùng.",
    "Trong lập trình hướng đối tượng, tính đóng gói giúp che giấu chi tiết cài đặt bên trong lớp.",
    "Tín hiệu số được lấy mẫu theo định lý Nyquist với tần số ít nhất gấp đôi tần số lớn nhất.",
    "Sinh viên cần ôn tập kỹ các chương về cây nhị phân tìm kiếm và bảng băm trước kỳ thi cuối kỳ.",
    "Mã hóa khóa công khai dùng một cặp khóa: khóa công khai để mã hóa và khóa bí mật để giải mã.",
    "Bộ nhớ ảo cho phép chương trình dùng không gian địa chỉ lớn hơn bộ nhớ vật lý thực tế.",
]
ENGLISH = [
    "A linked list stores its elements in nodes, and each node keeps a reference to the next one.",
    "Dijkstra's algorithm finds shortest paths from one source in a graph with non-negative weights.",
    "Virtual memory maps pages of a process's address space onto physical frames through page tables.",
    "In a relational database, a foreign key refers to the primary key of a row in another table.",
    "The transport layer provides end-to-end communication, flow control and error recovery.",
    "Dynamic programming solves a problem by combining the answers to overlapping subproblems.",
    "A hash table maps keys to values and resolves collisions by chaining or open addressing.",
    "Public-key cryptography lets two parties agree on a secret over a channel others can read.",
    "The scheduler decides which ready process runs next, balancing throughput and response time.",
    "Students should review binary search trees, heaps and graph traversal before the final exam.",
    "Fourier analysis expresses a periodic signal as a sum of sines and cosines of many frequencies.",
    "Object-oriented design groups data with the operations on it and hides the details inside.",
]


def make_bodies(count: int, count_tokens: Callable[[str], int], seed: int = 7) -> list[str]:
    """``count`` texts, half Vietnamese and half English, each 128-256 model tokens long."""
    rng = random.Random(seed)
    bodies = []
    for index in range(count):
        pool = VIETNAMESE if index % 2 == 0 else ENGLISH
        target = rng.randint(128, 250)
        text = ""
        while True:
            candidate = (text + " " + rng.choice(pool)).strip()
            if count_tokens(candidate) > target:
                break
            text = candidate
        bodies.append(text)
    return bodies


def tagged(bodies: list[str], phase: str) -> list[str]:
    # A distinct prefix per phase, so no phase is answered from the cache a former one filled.
    return [f"[{phase} {i}] {body}" for i, body in enumerate(bodies)]


@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float, unit: str, baseline_name: str, baseline: float) -> None:
        ratio = value / baseline if baseline else float("nan")
        self.rows.append((name, f"{value:,.2f} {unit}", f"{baseline_name}: {baseline:,.2f} {unit}", f"{ratio:.2f}x"))
        self.data[name] = value
        self.data[f"{name} (baseline)"] = baseline
        print(f"  {name}: {value:,.2f} {unit}  |  {baseline_name}: {baseline:,.2f} {unit}  |  {ratio:.2f}x", flush=True)

    def print(self) -> None:
        widths = [max(len(row[i]) for row in self.rows) for i in range(4)]
        print(
            "\n" + " | ".join(h.ljust(w) for h, w in zip(("figure", "value", "baseline", "ratio"), widths, strict=True))
        )
        print("-+-".join("-" * w for w in widths))
        for row in self.rows:
            print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


@contextmanager
def service(env: dict[str, str]) -> Iterator[ServiceProcess]:
    process = spawn_service("embedding", {"EMBEDDING_PORT": "0", "REDIS_URL": "", **env}, timeout=300)
    try:
        yield process
    finally:
        process.stop()


async def embed_all(
    stub: embedding_pb2_grpc.EmbeddingServiceAsyncStub, texts: list[str], per_request: int, in_flight: int
) -> float:
    """Texts per second embedding ``texts`` in requests of ``per_request``, ``in_flight`` at once."""
    requests = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    async def worker() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            response = await stub.Embed(embedding_pb2.EmbedRequest(texts=[t.encode() for t in batch]), timeout=600)
            assert len(response.embeddings) == len(batch)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return len(texts) / (time.perf_counter() - started)


async def latencies(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


async def service_round(address: str, texts: list[str], *, single_clients: bool) -> tuple[float, float]:
    """(texts/s with 32-text requests, texts/s with 32 concurrent one-text clients; 0 when skipped)."""
    half = len(texts) // 2 if single_clients else len(texts)
    async with create_channel(address, default_timeout=600) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        batched = await embed_all(stub, texts[:half], 32, 3)
        single = await embed_all(stub, texts[half:], 1, 32) if single_clients else 0.0
    return batched, single


async def cache_latency(address: str, cached: list[str], samples: int) -> tuple[list[float], list[float]]:
    """Latencies (ms) of one-text Embed calls answered from the cache, and of an empty Info RPC."""
    async with create_channel(address, default_timeout=600) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        requests = [embedding_pb2.EmbedRequest(texts=[t.encode()]) for t in cached]
        index = iter(range(10**9))
        hits = await latencies(lambda: stub.Embed(requests[next(index) % len(requests)]), samples)
        empty = await latencies(lambda: stub.Info(embedding_pb2.InfoRequest()), samples)
        stats = await stub.Stats(embedding_pb2.StatsRequest())
    print(f"  batches {stats.batches}, mean batch size {stats.mean_batch_size:.1f}", flush=True)
    return hits, empty


def st_rate(reference: Any, texts: list[str]) -> float:
    started = time.perf_counter()
    reference.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - started)


def compare_rounds(
    reference: Any, address: str, bodies: list[str], label: str, rounds: int, report: Report, *, single: bool
) -> list[str]:
    """Alternate baseline and service rounds (the box is shared: load drifts) and report medians."""
    baseline, batched, one_text = [], [], []
    asyncio.run(service_round(address, tagged(bodies[:32], f"{label}-warm"), single_clients=False))
    for r in range(rounds):
        baseline.append(st_rate(reference, tagged(bodies, f"st-{label}-{r}")))
        texts = tagged(bodies, f"{label}-{r}") + (tagged(bodies, f"{label}-one-{r}") if single else [])
        b, o = asyncio.run(service_round(address, texts, single_clients=single))
        batched.append(b)
        one_text.append(o)
        print(f"  round {r}: baseline {baseline[-1]:.2f}, service {b:.2f}, one-text clients {o:.2f} texts/s")
    name = "SentenceTransformer.encode(bs=32), same rounds"
    report.add(
        f"{label} service, 32 texts/request", statistics.median(batched), "texts/s", name, statistics.median(baseline)
    )
    if single:
        report.add(
            f"{label} service, 32 concurrent 1-text clients",
            statistics.median(one_text),
            "texts/s",
            name,
            statistics.median(baseline),
        )
    return tagged(bodies, f"{label}-0")


BARE_TORCH = textwrap.dedent(
    """
    import resource, sys, psutil, torch
    from transformers import AutoModel, AutoTokenizer
    path, texts = sys.argv[1], sys.stdin.read().split("\\x00")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            model(**tokenizer(texts[start:start + 32], padding=True, truncation=True, max_length=256,
                              return_tensors="pt"))
    print(psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    """
)


def bare_torch_rss(model_dir: str, texts: list[str]) -> tuple[int, int]:
    """(RSS, peak RSS) of a plain python+torch process that loaded the model and ran the same texts."""
    done = subprocess.run(
        [sys.executable, "-c", BARE_TORCH, model_dir],
        input="\x00".join(texts),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    rss, peak = done.stdout.strip().splitlines()[-1].split()
    return int(rss), int(peak)


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few texts, fp32 only: a smoke run")
    parser.add_argument("--texts", type=int, default=0, help="texts per round (default 64, quick 16)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both sides run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/service rounds (quick: 1)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    count = args.texts or (16 if args.quick else 64)

    from embedding.model import packaged_model_dir
    from sentence_transformers import SentenceTransformer

    model_dir = str(packaged_model_dir())
    reference = SentenceTransformer(model_dir, device=args.device)
    tokenizer = reference.tokenizer
    bodies = make_bodies(count, lambda text: len(tokenizer(text, verbose=False)["input_ids"]))
    print(
        f"{count} texts of 128-256 tokens (half Vietnamese), device {args.device}, "
        f"{psutil.cpu_count()} CPUs, torch threads {__import__('torch').get_num_threads()}",
        flush=True,
    )

    report = Report()
    reference.encode(tagged(bodies[:32], "st-warm"), batch_size=32)
    rounds = 1 if args.quick else args.rounds
    label = "fp32" if args.device == "cpu" else "cuda-auto"
    with service({"EMBEDDING_DEVICE": args.device, "EMBEDDING_DTYPE": "auto"}) as process:
        cached = compare_rounds(reference, process.address, bodies, label, rounds, report, single=True)
        hits, empty = asyncio.run(cache_latency(process.address, cached, 30 if args.quick else 300))
        report.add(f"{label} cache-hit Embed p95", p95(hits), "ms", "empty Info RPC p95", p95(empty))
        report.add(
            f"{label} cache-hit Embed p50",
            statistics.median(hits),
            "ms",
            "empty Info RPC p50",
            statistics.median(empty),
        )
        # Idle RSS: the service hands freed activation memory back after a second without work.
        time.sleep(2.0)
        service_rss = psutil.Process(process.process.pid).memory_info().rss
        service_peak = peak_rss(process.process.pid)
    if not args.quick and args.device == "cpu":
        with service({"EMBEDDING_DEVICE": "cpu", "EMBEDDING_DTYPE": "int8"}) as process:
            compare_rounds(reference, process.address, bodies, "int8", rounds, report, single=False)
        # The torch runtime the service used on the CPU before ONNX Runtime, for comparison.
        with service({"EMBEDDING_DEVICE": "cpu", "EMBEDDING_DTYPE": "fp32", "EMBEDDING_RUNTIME": "torch"}) as process:
            compare_rounds(reference, process.address, bodies, "torch-fp32", rounds, report, single=False)
    del reference
    if not args.quick:
        bare, bare_peak = bare_torch_rss(model_dir, tagged(bodies, "bare"))
        report.add(f"{label} service idle RSS", service_rss / 2**20, "MiB", "bare python+torch+model RSS", bare / 2**20)
        report.add(f"{label} service peak RSS", service_peak / 2**20, "MiB", "bare peak RSS", bare_peak / 2**20)
    report.print()
    for metric, name in (
        ("embedding_speedup", f"{label} service, 32 texts/request"),
        ("embedding_int8", "int8 service, 32 texts/request"),
    ):
        if name in report.data:
            value, baseline = report.data[name], report.data[f"{name} (baseline)"]
            record(
                metric,
                value / baseline,
                f"{value / baseline:.2f}x ({value:.2f} texts/s, {args.device}, {count} texts x {rounds} rounds)",
                f"SentenceTransformer.encode(batch_size=32) {baseline:.2f} texts/s",
            )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report.data, out, indent=2)


if __name__ == "__main__":
    main()
