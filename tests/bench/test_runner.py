"""`make bench`'s runner: figures reach the seed table, targets are judged, gaps are shown as gaps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import ISSUE_METRICS, SEED_METRICS, Benchmark, Run, table
from bench.report import FIGURES_ENV, Figure, read_figures, record

ROOT = Path(__file__).resolve().parents[2]


def test_record_appends_figures_only_when_the_runner_asks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FIGURES_ENV, raising=False)
    record("upload", 12.0, "12 MB/s")  # run by hand: nothing to write to, no error
    path = tmp_path / "figures.jsonl"
    monkeypatch.setenv(FIGURES_ENV, str(path))
    record("upload", 150.5, "150.5 MB/s", "bare 900 MB/s")
    record("db_p99", 7.25, "p99 7.25 ms")
    assert read_figures(path) == [
        Figure("upload", 150.5, "150.5 MB/s", "bare 900 MB/s"),
        Figure("db_p99", 7.25, "p99 7.25 ms", ""),
    ]


def test_table_judges_each_target_and_shows_what_was_not_measured() -> None:
    run = Run(
        Benchmark("gateway_bench"),
        "python -m bench.gateway_bench",
        0,
        1.0,
        "",
        "",
        [Figure("upload", 150.0, "150 MB/s", "bare 900 MB/s"), Figure("api_read_p95", 250.0, "p95 250 ms")],
    )
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table(SEED_METRICS, [run]).splitlines()[2:]}
    upload = rows["upload through the gateway into storage"]
    assert "| 150 MB/s | bare 900 MB/s | yes | `python -m bench.gateway_bench` |" in upload
    assert "| **no** |" in rows["API read (list sessions), 100 concurrent clients, no think time"]
    assert "| not measured |" in rows["DB p99 (vector search, one client)"]
    assert len(rows) == len(SEED_METRICS)
    assert {m.id for m in SEED_METRICS}.isdisjoint({m.id for m in ISSUE_METRICS})


def test_quick_web_benchmark_fills_its_rows_through_the_real_runner(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "web_bench", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document = output.read_text(encoding="utf-8")
    first_load = next(line for line in document.splitlines() if line.startswith("| first page load"))
    assert "not measured" not in first_load and "`python -m bench.web_bench --quick`" in first_load
    initial_js = next(line for line in document.splitlines() if line.startswith("| initial JavaScript"))
    assert "| yes |" in initial_js, initial_js
    assert "### web_bench" in document and "== initial JavaScript" in document
