"""The load-test harness in a few seconds, so it cannot rot. Figures are not asserted here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_load_test_quick_runs_against_the_real_mesh_without_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.load_test", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| GET /v1/sessions |" in out, out
    match = re.search(r"total throughput: ([0-9.]+) req/s, errors: (\d+)", out)
    assert match, out
    assert float(match.group(1)) > 0
    assert int(match.group(2)) == 0, out
    for service in ("gateway", "chat", "storage", "embedding", "metrics"):
        assert re.search(rf"\| {service} \| \d+ \|", out), f"no resource row for {service}:\n{out}"
