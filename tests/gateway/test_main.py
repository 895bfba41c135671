"""``python -m gateway`` as a real process: port 0, the "serving" line, secrets, bad config, SIGTERM."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from studyassist.core.testing import spawn_service

from tests.gateway.conftest import DEAD_ADDR


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "none", **env}
    return subprocess.run([sys.executable, "-m", "gateway"], env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ENVIRONMENT": "production", "JWT_SECRET": ""}, "JWT_SECRET is required"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET must be at least"),
        ({"GATEWAY_PORT": "http"}, "GATEWAY_PORT"),
        ({"CORS_ORIGINS": "evil.example"}, "CORS_ORIGINS"),
    ],
)
def test_bad_configuration_exits_2(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    result = _run({"DATA_DIR": str(tmp_path), **env})
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_exits_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _run({"DATA_DIR": str(tmp_path), "GATEWAY_PORT": str(busy.getsockname()[1])})
    assert result.returncode == 2 and "cannot start" in result.stderr


def test_serves_on_port_0_keeps_dev_secret_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {
        "GATEWAY_PORT": "0",
        "DATA_DIR": str(tmp_path),
        "JWT_SECRET": "",
        "ENVIRONMENT": "development",
        "STORAGE_ADDR": DEAD_ADDR,
        "CHAT_ADDR": DEAD_ADDR,
        "METRICS_ADDR": DEAD_ADDR,
        "REDIS_URL": "",
    }
    first = spawn_service("gateway", env, timeout=60)
    try:
        assert first.port > 0
        health = httpx.get(f"http://{first.address}/healthz", timeout=5)
        assert health.status_code == 200
        assert httpx.get(f"http://{first.address}/readyz", timeout=5).status_code == 503
    finally:
        assert first.stop() == 0
    secret_file = tmp_path / "jwt_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text()
    assert len(secret) >= 32

    second = spawn_service("gateway", env, timeout=60)
    try:
        assert httpx.get(f"http://{second.address}/healthz", timeout=5).status_code == 200
    finally:
        second.stop()
    assert secret_file.read_text() == secret  # kept across restarts: tokens survive a redeploy
