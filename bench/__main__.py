"""``make bench``: run every benchmark (in under 15 minutes) and write BENCHMARKS.md.

Each benchmark is a module run as its own process (``python -m bench.<name> ARGS``) that prints
its figures beside a baseline measured in the same run and hands the seed table's figures to this
runner through ``bench.report.record``. The runner writes the seed's table (target, our figure,
same-run baseline, whether the target is met, the machine and the command), then every
benchmark's full output, then the hand-written analysis kept in ``bench/notes.md``.

    python -m bench                      # the whole suite, rewrites BENCHMARKS.md
    python -m bench --only chat_bench    # some of it, printed (BENCHMARKS.md untouched)
    python -m bench --quick              # the smoke versions, printed
"""

from __future__ import annotations

import argparse
import operator
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.report import FIGURES_ENV, Figure, read_figures

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "bench" / "notes.md"


@dataclass(frozen=True)
class Benchmark:
    name: str
    # Arguments for `make bench`: sized so the whole suite stays under 15 minutes on 2 cores.
    args: tuple[str, ...] = ()
    timeout_s: int = 600

    def command(self, quick: bool) -> list[str]:
        return ["python", "-m", f"bench.{self.name}", *(["--quick"] if quick else self.args)]


BENCHMARKS = [
    Benchmark("embedding_bench", ("--rounds", "3", "--texts", "32")),
    # 200,000 chunks: loading them, their HNSW index and their BM25 index take about 6 minutes.
    Benchmark("storage_bench", ("--chunks", "200000"), timeout_s=1200),
    Benchmark("retrieval_eval", ("--weights", "0,0.1,0.2,0.5,1")),
    Benchmark("chat_bench"),
    Benchmark("gateway_bench", ("--seconds", "8")),
    Benchmark("telemetry_bench", ("--quick",)),
    Benchmark("gateway_telemetry_bench"),
    Benchmark("web_bench"),
    # 30-page PDF, 10,000 cards: about 2 minutes.
    Benchmark("cards_bench"),
    Benchmark("load_test", ("--measure", "30")),
]

COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
    ">": operator.gt,
}


@dataclass(frozen=True)
class Metric:
    id: str
    label: str
    target: str
    # The figure's value meets the target when `value <op> threshold`.
    op: str
    threshold: float


# The seed report's table, in its order, then the stricter targets our issues set.
SEED_METRICS = [
    Metric("api_p95", "API p95, 100 simulated students on the whole mesh (worst endpoint)", "< 200 ms", "<", 200),
    Metric("api_read_p95", "API read (list sessions), 100 concurrent clients, no think time", "< 200 ms", "<", 200),
    Metric("db_p99", "DB p99 (vector search, one client)", "< 50 ms", "<", 50),
    Metric("chat_simple", "chat, simple question (whole answer) p95", "< 2 s", "<", 2000),
    Metric("chat_complex", "chat, question with retrieval, streamed answer complete p95", "< 5 s", "<", 5000),
    Metric("upload", "upload through the gateway into storage", ">= 10 MB/s", ">=", 10),
    Metric("first_load", "first page load (login screen interactive, cold, median)", "< 1.5 s", "<", 1500),
    Metric("memory", "memory per process (peak, whole mesh under load)", "< 512 MB", "<", 512),
    Metric("cpu", "CPU per service at 100 students", "< 70 %", "<", 70),
    Metric(
        "users",
        "concurrent students served: all signed in, 0 errors, every endpoint p95 < 0.5 s",
        "1000+",
        ">=",
        1000,
    ),
]
ISSUE_METRICS = [
    Metric("embedding_speedup", "embedding service vs sentence-transformers encode (fp32, CPU)", ">= 1.0x", ">=", 1.0),
    Metric("embedding_int8", "embedding service int8 vs sentence-transformers encode", ">= 2x", ">=", 2.0),
    Metric("search_recall", "vector search recall@10 against exact search", ">= 0.98", ">=", 0.98),
    Metric("db_p99_strict", "vector search p99, one client (our aim)", "< 10 ms", "<", 10),
    Metric("db_p99_hybrid", "hybrid search (BM25 + vectors) p99, one client, 200k chunks", "< 50 ms", "<", 50),
    Metric("retrieval_recall5", "right passage in the top 5, our Vietnamese evaluation", ">= 0.65", ">=", 0.65),
    Metric("retrieval_chat_cites", "chat answers citing the gold passage (extractive)", ">= 65 %", ">=", 65),
    Metric("retrieval_no_diacritics", "recall@5 lost when typed without diacritics", "<= 5 %", "<=", 5),
    Metric(
        "retrieval_abstain_precision",
        "chat's abstentions that were right (material lacks the answer), at most 5 % of answerable refused",
        ">= 0.8",
        ">=",
        0.8,
    ),
    Metric(
        "retrieval_abstain_recall", "questions the material does not answer that chat abstains on", ">= 0.6", ">=", 0.6
    ),
    Metric("db_p99_concurrent", "vector search p99, 32 concurrent clients", "< 50 ms", "<", 50),
    Metric("storage_upload_pdf", "upload into storage over gRPC, PDF (our aim)", ">= 200 MB/s", ">=", 200),
    Metric("storage_upload_text", "upload into storage over gRPC, UTF-8 text (our aim)", ">= 200 MB/s", ">=", 200),
    Metric("ttft_overhead", "chat time-to-first-token overhead vs the LLM directly, p95", "<= 50 ms", "<=", 50),
    Metric("token_overhead", "chat per-token relay overhead, p99 (chat - direct)", "<= 5 ms", "<=", 5),
    Metric("chat_streams", "concurrent chat streams without errors", ">= 200", ">=", 200),
    Metric("cache_hit", "chat response-cache hit p95", "< 50 ms", "<", 50),
    Metric("api_read_p95_strict", "list sessions at 100 concurrent clients p95 (our aim)", "< 20 ms", "<", 20),
    Metric("api_read_ratio", "list sessions throughput vs bare Starlette JSON", ">= 0.5x", ">=", 0.5),
    Metric("upload_strict", "upload through the gateway (our aim)", ">= 100 MB/s", ">=", 100),
    Metric("sse_streams", "open SSE streams held without errors", ">= 1000", ">=", 1000),
    Metric("initial_js", "initial JavaScript (gzip)", "<= 200 KB", "<=", 200),
    Metric("telemetry_cost", "gateway throughput cost of exporting telemetry", "<= 10 %", "<=", 10),
    Metric("cards_deck_pdf", "50-card deck from a 30-page PDF, extractive", "< 10 s", "<", 10),
    Metric("reviews_due_p95", "GET /v1/reviews:due p95, 10,000 cards for the student", "< 50 ms", "<", 50),
    Metric("cards_in_passage", "extractive cards whose answer is in their cited passage", ">= 90 %", ">=", 90),
    Metric("cards_duplicates", "cards of a deck asking the same thing (all test decks)", "0", "<=", 0),
]


def machine() -> str:
    memory_gib = psutil.virtual_memory().total / 2**30
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, {memory_gib:.0f} GiB, Python {platform.python_version()}"


@dataclass
class Run:
    benchmark: Benchmark
    command: str
    returncode: int
    elapsed_s: float
    stdout: str
    stderr: str
    figures: list[Figure]


def run_benchmark(benchmark: Benchmark, quick: bool) -> Run:
    command = benchmark.command(quick)
    shown = " ".join(command)
    print(f"running {shown}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-figures-") as tmp:
        figures_path = Path(tmp) / "figures.jsonl"
        env = {**os.environ, FIGURES_ENV: str(figures_path)}
        started = time.monotonic()
        try:
            result = subprocess.run(
                [sys.executable, *command[1:]],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=benchmark.timeout_s,
            )
            returncode, stdout, stderr = result.returncode, result.stdout, result.stderr
        except subprocess.TimeoutExpired as exc:
            returncode = 124
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            stderr = f"timed out after {benchmark.timeout_s} s"
        elapsed = time.monotonic() - started
        figures = read_figures(figures_path)
    print(f"  {'ok' if returncode == 0 else f'FAILED (exit {returncode})'} in {elapsed:.0f} s", file=sys.stderr)
    return Run(benchmark, shown, returncode, elapsed, stdout, stderr, figures)


def table(metrics: list[Metric], runs: list[Run]) -> str:
    by_metric = {figure.metric: (figure, run) for run in runs for figure in run.figures}
    rows = ["| metric | target | our figure | same-run baseline | met | command |", "|---|---|---|---|---|---|"]
    for metric in metrics:
        found = by_metric.get(metric.id)
        if found is None:
            rows.append(f"| {metric.label} | {metric.target} | not measured | | — | |")
            continue
        figure, run = found
        met = "yes" if COMPARE[metric.op](figure.value, metric.threshold) else "**no**"
        rows.append(
            f"| {metric.label} | {metric.target} | {figure.text} | {figure.baseline or '—'} | {met} | `{run.command}` |"
        )
    return "\n".join(rows)


def render(runs: list[Run], started: str, total_s: float, load: tuple[float, float, float]) -> str:
    sections = []
    for run in runs:
        status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        tail = "" if run.returncode == 0 else "\n\nstderr tail:\n```\n" + run.stderr.strip()[-2000:] + "\n```"
        body = run.stdout.strip() or "(no output)"
        sections.append(
            f"### {run.benchmark.name}\n\n`{run.command}` — {status}, {run.elapsed_s:.0f} s\n\n```\n{body}\n```{tail}\n"
        )
    notes = NOTES.read_text(encoding="utf-8").strip() if NOTES.exists() else ""
    return (
        "# Benchmarks\n\n"
        f"Generated by `make bench` (`python -m bench`) on {started}: the whole suite took "
        f"{total_s / 60:.1f} minutes.\n"
        f"Machine: {machine()}; load average when it started {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.\n"
        "Every figure stands beside a baseline measured in the same run where one applies; "
        "each row names the command that reproduces it (run from the repository root with the project's "
        "virtual environment, `.venv/bin/python -m ...`).\n\n"
        "## The seed's performance table\n\n"
        f"{table(SEED_METRICS, runs)}\n\n"
        "## Targets set by our issues\n\n"
        f"{table(ISSUE_METRICS, runs)}\n\n"
        + (f"{notes}\n\n" if notes else "")
        + "## Full output of each benchmark\n\n"
        + "\n".join(sections)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke versions only (printed)")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark modules to run (printed)")
    parser.add_argument("--output", type=Path, default=None, help="where to write (default BENCHMARKS.md)")
    args = parser.parse_args()
    selected = [b for b in BENCHMARKS if args.only is None or b.name in args.only]
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load = os.getloadavg()
    began = time.monotonic()
    runs = [run_benchmark(benchmark, args.quick) for benchmark in selected]
    document = render(runs, started, time.monotonic() - began, load)
    output = args.output or (ROOT / "BENCHMARKS.md" if not args.quick and args.only is None else None)
    if output is None:
        print(document)
    else:
        output.write_text(document, encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
    return 1 if any(run.returncode != 0 for run in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
