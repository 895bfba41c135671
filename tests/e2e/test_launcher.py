"""`make run`'s launcher: the whole mesh comes up, answers, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_launcher_starts_the_mesh_and_stops_cleanly(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("GATEWAY", "CHAT", "STORAGE", "EMBEDDING", "METRICS", "METRICS_HTTP")}
    env = {
        **os.environ,
        **{f"{name}_PORT": str(port) for name, port in ports.items()},
        "DATA_DIR": str(tmp_path / "data"),
        "LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "none",
    }
    env.pop("DATABASE_URL", None)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "studyassist.launcher"], env=env, stdout=subprocess.PIPE, text=True
    )
    output: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert launcher.stdout is not None
        for line in launcher.stdout:
            output.append(line)
            if "is up:" in line:
                up.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert up.wait(240), "".join(output)
        text = "".join(output)
        assert f"http://localhost:{ports['GATEWAY']}" in text
        assert "extractive" in text  # no LLM at that address, and the launcher says so
        base = f"http://127.0.0.1:{ports['GATEWAY']}"
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        assert httpx.get(f"{base}/", timeout=10).status_code == 200
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 5  # five services, plus PostgreSQL's processes
    finally:
        launcher.send_signal(signal.SIGINT)
        code = launcher.wait(120)
    assert code == 0
    time.sleep(0.5)
    survivors = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [p.cmdline() for p in survivors]
    assert not (tmp_path / "data" / "pg" / "postmaster.pid").exists()
