"""Figures a benchmark hands to ``make bench`` for the seed table in BENCHMARKS.md.

A benchmark prints its full output for people and, for each row of the table it measures, calls
``record``. When ``make bench`` runs it, ``BENCH_FIGURES`` names a file and every figure is
appended to it as one JSON line; run by hand, ``record`` does nothing beyond the printed output.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FIGURES_ENV = "BENCH_FIGURES"


@dataclass(frozen=True)
class Figure:
    # Which row of the runner's table this fills (see bench/__main__.py METRICS).
    metric: str
    # The number compared with the target, in the row's unit.
    value: float
    # How it reads in the table, e.g. "p95 11.0 ms (list sessions), 0 errors".
    text: str
    # What the same run measured to compare against ("" where the seed's figure is the only one).
    baseline: str = ""


def record(metric: str, value: float, text: str, baseline: str = "") -> None:
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(Figure(metric, float(value), text, baseline)), ensure_ascii=False) + "\n")


def read_figures(path: Path) -> list[Figure]:
    if not path.exists():
        return []
    return [Figure(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
