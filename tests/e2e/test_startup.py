"""Wrong settings end a service with a non-zero exit and one clear line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BAD_PORTS = [
    ("gateway", "GATEWAY_PORT"),
    ("chat", "CHAT_PORT"),
    ("storage", "STORAGE_PORT"),
    ("embedding", "EMBEDDING_PORT"),
    ("metrics", "METRICS_PORT"),
]


def run_module(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "none", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("module", "variable"), BAD_PORTS)
def test_bad_port_is_one_clear_line(module: str, variable: str) -> None:
    # Every other setting is valid, so the bad port is what must be reported.
    valid = {"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    result = run_module(module, {**valid, variable: "eighty"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_one_clear_line() -> None:
    result = run_module(
        "storage",
        {"STORAGE_PORT": "0", "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "EMBEDDING_ADDR": "127.0.0.1:9"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("storage: cannot start:") and "DATABASE_URL" in lines[0], result.stderr
