"""Whole-system load test: simulated students against the real mesh started by the launcher.

Each virtual student logs in, then loops with think time over what students do: list sessions,
search history, list files, ask a question (streamed, extractive mode unless an LLM answers),
upload a small note, and some keep an SSE stream open. Reports p50/p95/p99 per endpoint, errors,
throughput, and RSS/CPU per service at each concurrency level. Warm-up is excluded; seeds fixed.

    python -m bench.load_test                # 100, 500, 1000 users
    python -m bench.load_test --quick        # a few seconds, 10 users (the smoke test runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import psutil

from bench.report import record

SERVICES = ("gateway", "chat", "storage", "embedding", "metrics")
NOTE = "Giải thuật Dijkstra tìm đường đi ngắn nhất từ một đỉnh nguồn trong đồ thị có trọng số không âm. " * 20
LOGIN = "POST /v1/auth/login"
SERVED_P95_MS = 500.0
QUESTIONS = ["Dijkstra dùng để làm gì?", "What does Dijkstra's algorithm find?", "đồ thị có trọng số âm thì sao?"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Mesh:
    base_url: str
    launcher: subprocess.Popen[str]
    metrics_address: str

    def service_processes(self) -> dict[str, psutil.Process]:
        found = {}
        for child in psutil.Process(self.launcher.pid).children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            for name in SERVICES:
                if cmdline[-2:] == ["-m", name]:
                    found[name] = child
        return found


@contextmanager
def start_mesh() -> Iterator[Mesh]:
    ports = {name: free_port() for name in ("GATEWAY", "CHAT", "STORAGE", "EMBEDDING", "METRICS", "METRICS_HTTP")}
    data_dir = tempfile.mkdtemp(prefix="sa-load-")
    # One mesh key for the launched services and this process, which asks metrics for its dashboard.
    os.environ.setdefault("MESH_KEY", secrets.token_urlsafe(48))
    env = {
        **os.environ,
        **{f"{name}_PORT": str(port) for name, port in ports.items()},
        "DATA_DIR": data_dir,
        "LOG_LEVEL": "warning",
        # The load test measures capacity, not the rate limiter: every simulated student shares
        # one account per ten students and one IP (127.0.0.1), which real students do not.
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_IP_PER_MINUTE": "0",
        # Nor the sign-in backoff: ten students signing in to one account at once would wait it out.
        "SIGN_IN_FREE_ATTEMPTS": "1000",
    }
    env.setdefault("LLM_BASE_URL", "http://127.0.0.1:9/v1")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "studyassist.launcher"], env=env, stdout=subprocess.PIPE, text=True
    )
    up = threading.Event()

    def read() -> None:
        assert launcher.stdout is not None
        for line in launcher.stdout:
            if "is up:" in line:
                up.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not up.wait(300):
            raise RuntimeError("the mesh did not come up in 300 s")
        yield Mesh(f"http://127.0.0.1:{ports['GATEWAY']}", launcher, f"127.0.0.1:{ports['METRICS']}")
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()


@dataclass
class Recorder:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # What each failure was: an HTTP status, or the client-side exception's name.
    error_kinds: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    # Sign-ins refused with 429 + Retry-After while the gateway's hashing queue was full: the
    # student waits and retries (as the web app does), so they are back-pressure, not failures.
    throttled: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recording: bool = False

    def record(self, endpoint: str, seconds: float, ok: bool, kind: str = "") -> None:
        # Sign-ins happen during the ramp, before measuring starts; they are always recorded.
        if not self.recording and endpoint != LOGIN:
            return
        self.latencies[endpoint].append(seconds)
        if ok:
            return
        if endpoint == LOGIN and kind == "429":
            self.throttled[endpoint] += 1
            return
        self.errors[endpoint] += 1
        self.error_kinds[endpoint][kind or "error"] += 1

    def describe_errors(self, endpoint: str) -> str:
        count = self.errors.get(endpoint, 0)
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.error_kinds[endpoint].items()))
        throttled = self.throttled.get(endpoint, 0)
        return f"{count}" + (f" ({kinds})" if kinds else "") + (f"; {throttled} 429 retried" if throttled else "")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(
    recorder: Recorder, endpoint: str, request: httpx.Request, client: httpx.AsyncClient
) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await client.send(request)
        await response.aread()
    except httpx.HTTPError as exc:
        recorder.record(endpoint, time.perf_counter() - started, False, type(exc).__name__)
        return None
    ok = response.status_code < 400
    recorder.record(endpoint, time.perf_counter() - started, ok, "" if ok else str(response.status_code))
    return response


async def sign_in(client: httpx.AsyncClient, recorder: Recorder, email: str, password: str) -> str | None:
    """Log in, waiting out 429s as a browser would (the gateway bounds concurrent password hashing)."""
    for _ in range(100):
        request = client.build_request("POST", "/v1/auth/login", json={"email": email, "password": password})
        response = await timed(recorder, LOGIN, request, client)
        if response is not None and response.status_code == 429:
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        if response is None or response.status_code != 200:
            return None
        return str(response.json()["access_token"])
    return None


async def student(
    index: int,
    credentials: tuple[str, str],
    base: str,
    recorder: Recorder,
    stop: asyncio.Event,
    think_s: float,
    signed_in: asyncio.Queue[bool],
) -> None:
    rng = random.Random(index)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        token = await sign_in(client, recorder, *credentials)
        await signed_in.put(token is not None)
        if token is None:
            return
        client.headers["Authorization"] = f"Bearer {token}"
        holds_stream = index % 10 == 0
        while not stop.is_set():
            await asyncio.sleep(rng.expovariate(1 / think_s))
            if stop.is_set():
                break
            action = rng.random()
            if holds_stream and action < 0.1:
                # An SSE stream kept open: watch a file's progress (ends when it is ready).
                files = await timed(recorder, "GET /v1/files", client.build_request("GET", "/v1/files"), client)
                if files is not None and files.status_code == 200 and files.json().get("files"):
                    file_id = files.json()["files"][0]["file_id"]
                    started = time.perf_counter()
                    try:
                        async with client.stream("GET", f"/v1/files/{file_id}:watch") as stream:
                            async for _ in stream.aiter_lines():
                                pass
                        recorder.record("GET /v1/files/{id}:watch", time.perf_counter() - started, True)
                    except httpx.HTTPError as exc:
                        recorder.record(
                            "GET /v1/files/{id}:watch", time.perf_counter() - started, False, type(exc).__name__
                        )
            elif action < 0.45:
                await timed(recorder, "GET /v1/sessions", client.build_request("GET", "/v1/sessions"), client)
            elif action < 0.6:
                request = client.build_request("GET", "/v1/messages:search", params={"query": "dijkstra"})
                await timed(recorder, "GET /v1/messages:search", request, client)
            elif action < 0.75:
                await timed(recorder, "GET /v1/files", client.build_request("GET", "/v1/files"), client)
            elif action < 0.95:
                body = {"agent_id": "explainer", "message": rng.choice(QUESTIONS)}
                request = client.build_request("POST", "/v1/chat:stream", json=body)
                await timed(recorder, "POST /v1/chat:stream", request, client)
            else:
                request = client.build_request(
                    "POST",
                    "/v1/files",
                    params={"file_name": f"note-{uuid.uuid4().hex[:6]}.txt"},
                    content=(NOTE + str(rng.random())).encode(),
                )
                await timed(recorder, "POST /v1/files", request, client)


async def register_users(base: str, count: int) -> list[tuple[str, str]]:
    users = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        semaphore = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            email, password = f"load{i}-{uuid.uuid4().hex[:6]}@stu.ptit.edu.vn", "mat-khau-tai-thu"
            async with semaphore:
                response = await client.post(
                    "/v1/auth/register", json={"email": email, "password": password, "display_name": f"SV {i}"}
                )
            if response.status_code == 201:
                users.append((email, password))

        await asyncio.gather(*(one(i) for i in range(count)))
    return users


@dataclass
class LevelResult:
    concurrency: int
    signed_in: int
    errors: int
    # The worst p95 (ms) over the request/response endpoints (not sign-in, not long-lived streams).
    worst_p95_ms: float
    worst_endpoint: str
    peak_rss_mb: dict[str, float]
    cpu_percent: dict[str, float]
    report: str


async def run_level(
    mesh: Mesh, users: list[tuple[str, str]], concurrency: int, warmup_s: float, measure_s: float, think_s: float
) -> LevelResult:
    recorder = Recorder()
    stop = asyncio.Event()
    signed_in: asyncio.Queue[bool] = asyncio.Queue()
    ramp_started = time.monotonic()
    tasks = [
        asyncio.create_task(student(i, users[i % len(users)], mesh.base_url, recorder, stop, think_s, signed_in))
        for i in range(concurrency)
    ]
    processes = mesh.service_processes()
    # The ramp: every student signs in (argon2id is ~20 ms of CPU each, bounded by the gateway),
    # then a warm-up at full concurrency; neither is in the figures except the sign-in row.
    active = sum([await signed_in.get() for _ in range(concurrency)])
    ramp_s = time.monotonic() - ramp_started
    await asyncio.sleep(warmup_s)
    recorder.recording = True
    for process in processes.values():
        process.cpu_percent(None)
    peak_rss: dict[str, int] = defaultdict(int)
    started = time.monotonic()
    while time.monotonic() - started < measure_s:
        await asyncio.sleep(1.0)
        for name, process in processes.items():
            with contextlib.suppress(psutil.Error):
                peak_rss[name] = max(peak_rss[name], process.memory_info().rss)
    elapsed = time.monotonic() - started
    cpu = {name: process.cpu_percent(None) for name, process in processes.items()}
    recorder.recording = False
    stop.set()
    await asyncio.wait(tasks, timeout=30)
    for task in tasks:
        task.cancel()
    lines = [
        f"### {concurrency} concurrent students ({active} signed in during a {ramp_s:.0f} s ramp; "
        f"{measure_s:.0f} s measured after {warmup_s:.0f} s warm-up; think time mean {think_s:.1f} s)",
        "",
        "| endpoint | requests | errors | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    total = 0
    for endpoint, values in sorted(recorder.latencies.items()):
        # Sign-ins all happen in the ramp: their row shows latency; req/s there is not a rate.
        total += 0 if endpoint == LOGIN else len(values)
        lines.append(
            f"| {endpoint} | {len(values)} | {recorder.describe_errors(endpoint)} | {len(values) / elapsed:.1f} | "
            f"{percentile(values, 0.5) * 1000:.1f} | {percentile(values, 0.95) * 1000:.1f} | "
            f"{percentile(values, 0.99) * 1000:.1f} |"
        )
    lines += [
        "",
        f"total throughput: {total / elapsed:.1f} req/s, errors: {sum(recorder.errors.values())}",
        "",
        "| service | peak RSS MB | CPU % (of one core) |",
        "|---|---|---|",
    ]
    for name in SERVICES:
        if name in processes:
            lines.append(f"| {name} | {peak_rss[name] / 2**20:.0f} | {cpu[name]:.0f} |")
    p95s = {
        endpoint: percentile(values, 0.95) * 1000
        for endpoint, values in recorder.latencies.items()
        if endpoint != LOGIN and not endpoint.endswith(":watch")
    }
    worst = max(p95s, key=lambda endpoint: p95s[endpoint], default="")
    return LevelResult(
        concurrency=concurrency,
        signed_in=active,
        errors=sum(recorder.errors.values()),
        worst_p95_ms=p95s.get(worst, 0.0),
        worst_endpoint=worst,
        peak_rss_mb={name: peak_rss[name] / 1e6 for name in processes},
        cpu_percent=cpu,
        report="\n".join(lines),
    )


async def slowest_methods(metrics_address: str, window_s: float, count: int = 12) -> str:
    """The backends' own view (the metrics service's dashboard): where the time goes inside the mesh."""
    from studyassist.core.channels import create_channel
    from studyassist.metrics.v1 import metrics_pb2, metrics_pb2_grpc

    channel = create_channel(metrics_address)
    try:
        dashboard = await metrics_pb2_grpc.MetricsServiceStub(channel).GetDashboard(
            metrics_pb2.GetDashboardRequest(window_seconds=max(1, round(window_s)))
        )
    except Exception as exc:  # the report goes on without this table
        return f"(metrics service dashboard unavailable: {exc!r})"
    finally:
        await channel.close(None)
    rows = sorted(
        (e for e in dashboard.endpoints if e.count),
        key=lambda e: e.p95_ms * e.count,
        reverse=True,
    )[:count]
    lines = [
        "Inside the mesh (server-side durations from the metrics service: gateway routes and gRPC methods, "
        "busiest first by p95 x calls):",
        "",
        "| service | method | calls | p50 ms | p95 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {e.service} | {e.method} | {e.count} | {e.p50_ms:.1f} | {e.p95_ms:.1f} | {e.errors} |" for e in rows]
    return "\n".join(lines)


def record_figures(results: list[LevelResult]) -> None:
    """The seed table's rows this test measures (see bench/report.py)."""
    first = results[0]
    record(
        "api_p95",
        first.worst_p95_ms,
        f"{first.concurrency} students: worst p95 {first.worst_p95_ms:.1f} ms ({first.worst_endpoint}), "
        f"{first.errors} errors",
    )
    busiest = max(first.cpu_percent, key=lambda name: first.cpu_percent[name])
    record(
        "cpu",
        first.cpu_percent[busiest],
        f"{first.concurrency} students: busiest {busiest} {first.cpu_percent[busiest]:.0f} % of one core",
    )
    peaks = {name: max(r.peak_rss_mb.get(name, 0.0) for r in results) for name in first.peak_rss_mb}
    biggest = max(peaks, key=lambda name: peaks[name])
    record(
        "memory",
        peaks[biggest],
        f"largest {biggest} {peaks[biggest]:.0f} MB at up to {results[-1].concurrency} students; "
        + ", ".join(f"{name} {mib:.0f}" for name, mib in sorted(peaks.items()) if name != biggest),
    )
    # Served: every student signed in, no errors, and every endpoint's p95 under the seed's own
    # alert threshold for response time (0.5 s), not merely "answered eventually".
    clean = [
        r.concurrency
        for r in results
        if r.errors == 0 and r.signed_in == r.concurrency and r.worst_p95_ms < SERVED_P95_MS
    ]
    served = max(clean, default=0)
    where = "; ".join(
        f"{r.concurrency}: {r.signed_in} signed in, {r.errors} errors, worst p95 {r.worst_p95_ms:.0f} ms "
        f"({r.worst_endpoint})"
        for r in results
    )
    record("users", served, f"{served} ({where})")


async def main_async(levels: list[int], warmup_s: float, measure_s: float, think_s: float, user_count: int) -> None:
    with start_mesh() as mesh:
        users = await register_users(mesh.base_url, user_count)
        if not users:
            raise RuntimeError("could not register any user")
        # Every user gets a document, so questions retrieve something.
        async with httpx.AsyncClient(base_url=mesh.base_url, timeout=120) as client:
            for email, password in users[: min(len(users), 20)]:
                token = (await client.post("/v1/auth/login", json={"email": email, "password": password})).json()
                await client.post(
                    "/v1/files",
                    params={"file_name": "dijkstra.txt"},
                    content=NOTE.encode(),
                    headers={"Authorization": f"Bearer {token['access_token']}"},
                )
        print(f"mesh up at {mesh.base_url}; {len(users)} registered students; seed fixed per student\n")
        results = []
        for level in levels:
            result = await run_level(mesh, users, level, warmup_s, measure_s, think_s)
            print(result.report, "\n", flush=True)
            print(await slowest_methods(mesh.metrics_address, measure_s + warmup_s), "\n", flush=True)
            results.append(result)
        record_figures(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--levels", type=int, nargs="*", default=[100, 500, 1000])
    parser.add_argument("--measure", type=float, default=45, help="seconds measured per level")
    args = parser.parse_args()
    if args.quick:
        asyncio.run(main_async([10], warmup_s=1, measure_s=4, think_s=0.5, user_count=5))
    else:
        asyncio.run(main_async(args.levels, warmup_s=10, measure_s=args.measure, think_s=5.0, user_count=100))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
