"""`make run`'s launcher: the whole mesh comes up, answers, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.chat.tinyllm import build_tiny_llm
from tests.e2e.test_slice import NOTES, sse_events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Launched:
    process: subprocess.Popen[str]
    ports: dict[str, int]
    output: list[str] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def text(self) -> str:
        return "".join(self.output)


@contextmanager
def launched(data_dir: Path, extra_env: dict[str, str], *, logs: bool = False) -> Iterator[Launched]:
    """Run the launcher on free ports until it prints its summary; Ctrl-C it afterwards. With
    ``logs``, the log lines (stderr, the launcher's and its children's) are in ``output`` too."""
    ports = {name: free_port() for name in ("GATEWAY", "CHAT", "STORAGE", "EMBEDDING", "METRICS", "METRICS_HTTP")}
    env = {
        **os.environ,
        **{f"{name}_PORT": str(port) for name, port in ports.items()},
        "DATA_DIR": str(data_dir),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "none",
        **extra_env,
    }
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "studyassist.launcher"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if logs else None,
        text=True,
    )
    run = Launched(process, ports)
    up = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            run.output.append(line)
            if "is up:" in line:
                up.set()
        up.set()  # the launcher exited: stop waiting, the assertion below reports it

    threading.Thread(target=read, daemon=True).start()
    try:
        assert up.wait(300) and process.poll() is None, f"launcher not up (exit {process.poll()}):\n{run.text}"
        yield run
    finally:
        process.send_signal(signal.SIGINT)
        run.exit_code = process.wait(120)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A DATA_DIR outside pytest's tmp tree: embedded PostgreSQL runs as another user (we are root
    here) and needs every parent folder traversable, which pytest's private 0700 tmp root is not."""
    path = Path(tempfile.mkdtemp(prefix="sa-launch-", dir="/tmp"))
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def test_launcher_starts_the_mesh_and_stops_cleanly(data_dir: Path) -> None:
    with launched(data_dir, {"LLM_BASE_URL": "http://127.0.0.1:9/v1"}) as run:
        assert f"http://localhost:{run.ports['GATEWAY']}" in run.text
        assert "extractive" in run.text  # no LLM at that address, and the launcher says so
        base = f"http://127.0.0.1:{run.ports['GATEWAY']}"
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        assert httpx.get(f"{base}/", timeout=10).status_code == 200
        children = psutil.Process(run.process.pid).children(recursive=True)
        assert len(children) >= 5  # the five services
    assert run.exit_code == 0
    time.sleep(0.5)
    survivors = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [p.cmdline() for p in survivors]
    assert not (data_dir / "pg" / "postmaster.pid").exists()


def test_launcher_serves_a_local_model_directory(tmp_path: Path, data_dir: Path) -> None:
    """LLM_MODEL_DIR: chat serves it with `transformers serve` (its child), answers with it, and
    Ctrl-C leaves no model server behind."""
    model_dir = tmp_path / "tiny-llm"
    build_tiny_llm(model_dir)
    with launched(data_dir, {"LLM_MODEL_DIR": str(model_dir)}) as run:
        assert f"local model {model_dir}, served by chat with transformers serve at http://127.0.0.1:" in run.text
        children = psutil.Process(run.process.pid).children(recursive=True)
        model_servers = [p for p in children if "serve" in p.cmdline() and str(model_dir) in p.cmdline()]
        assert len(model_servers) == 1  # chat's child; checked below to be gone after Ctrl-C
        with httpx.Client(base_url=f"http://127.0.0.1:{run.ports['GATEWAY']}", timeout=120) as client:
            account = {"email": "llm@stu.ptit.edu.vn", "password": "mat-khau-dai-1", "display_name": "SV"}
            token = client.post("/v1/auth/register", json=account).json()["access_token"]
            client.headers["Authorization"] = f"Bearer {token}"
            upload = client.post("/v1/files", params={"file_name": "notes.md"}, content=NOTES.encode())
            file_id = upload.json()["file_id"]
            deadline = time.monotonic() + 120
            while client.get(f"/v1/files/{file_id}").json()["status"] != "FILE_STATUS_READY":
                assert time.monotonic() < deadline, "the file never became ready"
                time.sleep(0.3)
            question = {"agent_id": "explainer", "message": "What is the PTIT mascot in the queue notes?"}
            with client.stream("POST", "/v1/chat:stream", json=question) as response:
                events = sse_events(response)
        assert events[0]["started"]["backend"].startswith("llm:"), events[0]
        assert any("delta" in e and e["delta"]["text"] for e in events)
    assert run.exit_code == 0
    time.sleep(0.5)
    survivors = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [p.cmdline() for p in survivors]
