"""The launcher supervises its children: one that dies is restarted with back-off, logged and
counted, while the others (and PostgreSQL) keep running.

The first tests drive ``studyassist.core.supervision`` with real child processes (small Python
programs); the last one starts the real launcher, kills chat with SIGKILL and watches the mesh.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from studyassist.core.supervision import CRASH_LOOP_AFTER, Backoff, State, Supervisor, describe_exit
from studyassist.launcher import grpc_serving

from tests.e2e.test_launcher import data_dir, launched

__all__ = ["data_dir"]  # the fixture, imported for the launcher test below

# A child that notes its pid in a file (its readiness), then runs until killed. With a flag file
# present it exits with code 3 at once instead: a child that crashes at start.
CHILD = """
import os, sys, time
pid_file, crash_flag = sys.argv[1], sys.argv[2]
if os.path.exists(crash_flag):
    sys.exit(3)
with open(pid_file + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(pid_file + ".tmp", pid_file)
time.sleep(600)
"""


def child_command(tmp_path: Path, name: str) -> tuple[list[str], Path, Path]:
    pid_file, crash_flag = tmp_path / f"{name}.pid", tmp_path / f"{name}.crash"
    return [sys.executable, "-c", CHILD, str(pid_file), str(crash_flag)], pid_file, crash_flag


def pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def ready_when_written(supervisor: Supervisor, name: str, pid_file: Path) -> Any:
    """Ready once the child's *current* process wrote its pid (not the pid of an earlier run)."""

    def ready() -> bool:
        process = supervisor.child(name).process
        return process is not None and pid_in(pid_file) == process.pid

    return ready


def tick_until(supervisor: Supervisor, done: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the supervisor did not get there"
        supervisor.tick()
        time.sleep(0.02)


@pytest.fixture
def restarted() -> list[str]:
    """The names the supervisor reported restarting (the launcher counts these in its metric)."""
    return []


@pytest.fixture
def supervisor(restarted: list[str]) -> Iterator[Supervisor]:
    backoff = Backoff(first_s=0.05, factor=2.0, cap_s=0.2, healthy_after_s=3600)
    mesh = Supervisor(os.environ, backoff, on_restart=restarted.append)
    yield mesh
    mesh.stop(timeout=10)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first_s=0.5, factor=2.0, cap_s=30.0)
    assert [backoff.delay_s(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    # A child failing for ever is still retried, at the cap (no overflow after many failures).
    assert backoff.delay_s(10_000) == 30.0
    assert Backoff(first_s=1, factor=1, cap_s=1).delay_s(5) == 1
    with pytest.raises(ValueError, match="at least 1"):
        backoff.delay_s(0)
    for bad in ({"first_s": 0}, {"factor": 0.5}, {"first_s": 10, "cap_s": 5}, {"healthy_after_s": 0}):
        with pytest.raises(ValueError, match="invalid back-off"):
            Backoff(**bad)


def test_exit_descriptions_name_the_code_or_the_signal() -> None:
    assert describe_exit(0) == "code 0"
    assert describe_exit(3) == "code 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-signal.SIGTERM) == "signal SIGTERM"


def test_a_killed_child_is_restarted_and_the_others_keep_running(
    supervisor: Supervisor, restarted: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="launcher")
    for name in ("first", "second"):
        command, pid_file, _ = child_command(tmp_path, name)
        supervisor.start(name, command, ready_when_written(supervisor, name, pid_file), 60)
    first, second = supervisor.child("first"), supervisor.child("second")
    assert first.process is not None and second.process is not None
    first_pid, second_pid = first.process.pid, second.process.pid

    first.process.send_signal(signal.SIGKILL)
    tick_until(supervisor, lambda: first.state is State.RUNNING and first.restarts == 1)

    assert first.process.pid != first_pid and pid_in(tmp_path / "first.pid") == first.process.pid
    assert second.process.pid == second_pid and second.process.poll() is None and second.restarts == 0
    assert restarted == ["first"]
    exits = [r for r in caplog.records if r.getMessage() == "service exited; restarting it"]
    assert len(exits) == 1
    assert exits[0].fields["child"] == "first"  # type: ignore[attr-defined]
    assert exits[0].fields["exit"] == "signal SIGKILL"  # type: ignore[attr-defined]
    assert exits[0].fields["restart_in_s"] == 0.05  # type: ignore[attr-defined]
    assert any(r.getMessage() == "service answering again" for r in caplog.records)


def test_a_child_crashing_at_start_is_retried_with_growing_delays(
    supervisor: Supervisor, restarted: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="launcher")
    command, pid_file, crash_flag = child_command(tmp_path, "flaky")
    supervisor.start("flaky", command, ready_when_written(supervisor, "flaky", pid_file), 60)
    child = supervisor.child("flaky")
    assert child.process is not None
    crash_flag.touch()  # from now on every start exits with code 3
    child.process.send_signal(signal.SIGKILL)
    tick_until(supervisor, lambda: child.restarts >= 5 and child.state is State.WAITING)

    exits = [r for r in caplog.records if getattr(r, "fields", {}).get("exit") is not None]
    delays = [r.fields["restart_in_s"] for r in exits]  # type: ignore[attr-defined]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.2, 0.2]  # doubling, then the cap
    assert [r.fields["exit"] for r in exits[:2]] == ["signal SIGKILL", "code 3"]  # type: ignore[attr-defined]
    looping = [r for r in exits if r.getMessage() == "service keeps crashing at start; restarting it with back-off"]
    assert looping and looping[0].fields["failures"] == CRASH_LOOP_AFTER  # type: ignore[attr-defined]
    assert restarted == ["flaky"] * child.restarts

    # Once it can start again, it does, and stays up.
    crash_flag.unlink()
    tick_until(supervisor, lambda: child.state is State.RUNNING)
    assert child.process.poll() is None


def test_a_restarted_child_needs_only_to_answer_and_one_that_never_does_is_killed(
    supervisor: Supervisor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Readiness can depend on other services (the gateway's on storage): a restarted child that
    answers but is not ready is left running; one that does not even answer in time is killed."""
    caplog.set_level(logging.INFO, logger="launcher")
    command, pid_file, _ = child_command(tmp_path, "svc")
    written = ready_when_written(supervisor, "svc", pid_file)
    gate = {"ready": True, "alive": True}
    supervisor.start("svc", command, lambda: gate["ready"] and written(), 5, alive=lambda: gate["alive"] and written())
    child = supervisor.child("svc")
    assert child.process is not None

    gate["ready"] = False  # a dependency went away
    child.process.send_signal(signal.SIGKILL)
    tick_until(supervisor, lambda: child.restarts == 1 and child.state is State.RUNNING)
    assert child.process.poll() is None

    gate["alive"] = False  # now it never answers
    child.process.send_signal(signal.SIGKILL)
    tick_until(supervisor, lambda: child.restarts == 2 and child.state is State.WAITING)
    messages = [r.getMessage() for r in caplog.records]
    assert "restarted service not answering in time; killing it" in messages
    exits = [r.fields["exit"] for r in caplog.records if getattr(r, "fields", {}).get("exit")]  # type: ignore[attr-defined]
    assert exits == ["signal SIGKILL", "signal SIGKILL", "signal SIGKILL"]  # the last one the supervisor's


def test_no_restart_after_a_stop_request(supervisor: Supervisor, tmp_path: Path) -> None:
    command, pid_file, _ = child_command(tmp_path, "only")
    supervisor.start("only", command, ready_when_written(supervisor, "only", pid_file), 60)
    child = supervisor.child("only")
    assert child.process is not None
    child.process.send_signal(signal.SIGKILL)
    tick_until(supervisor, lambda: child.state is State.WAITING)
    dead = child.process
    supervisor.request_stop()  # as the launcher's SIGTERM handler does, with the restart due
    time.sleep(0.1)
    for _ in range(5):
        supervisor.tick()
    assert child.process is dead and child.restarts == 0 and child.state is State.WAITING
    supervisor.stop()  # nothing left to stop; returns at once
    assert dead.poll() == -signal.SIGKILL


def test_a_child_that_exits_during_its_first_start_is_an_error(supervisor: Supervisor, tmp_path: Path) -> None:
    command, pid_file, crash_flag = child_command(tmp_path, "broken")
    crash_flag.touch()
    with pytest.raises(RuntimeError, match="broken exited with code 3 during start"):
        supervisor.start("broken", command, ready_when_written(supervisor, "broken", pid_file), 60)


def service_process(launcher_pid: int, name: str) -> psutil.Process:
    """The launcher's child running ``python -m <name>`` (the shim execs it in the same process)."""
    found = [p for p in psutil.Process(launcher_pid).children() if p.cmdline()[-2:] == ["-m", name]]
    assert len(found) == 1, [p.cmdline() for p in psutil.Process(launcher_pid).children()]
    return found[0]


def log_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # two processes' lines interleaved on the shared pipe
    return lines


def restarts_counted(metrics_http: str) -> float | None:
    """launcher_child_restarts_total{child="chat"} at the metrics service's Prometheus endpoint."""
    text = httpx.get(f"{metrics_http}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "launcher_child_restarts_total" and sample.labels.get("child") == "chat":
                assert sample.labels["service"] == "launcher"
                return float(sample.value)
    return None


def test_killing_chat_restarts_it_and_the_mesh_keeps_serving(data_dir: Path) -> None:
    env = {
        "LLM_BASE_URL": "http://127.0.0.1:9/v1",
        # Telemetry to the mesh's own metrics service (the launcher's restart counter among it).
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }
    with launched(data_dir, env, logs=True) as run:
        base = f"http://127.0.0.1:{run.ports['GATEWAY']}"
        metrics_http = f"http://127.0.0.1:{run.ports['METRICS_HTTP']}"
        chat_address = f"127.0.0.1:{run.ports['CHAT']}"
        others = {name: service_process(run.process.pid, name) for name in ("metrics", "embedding", "storage")}
        others["gateway"] = service_process(run.process.pid, "gateway")
        chat = service_process(run.process.pid, "chat")
        postmaster = int((data_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])
        # The counter exists at 0 before any restart.
        deadline = time.monotonic() + 60
        while restarts_counted(metrics_http) != 0.0:
            assert time.monotonic() < deadline, "the launcher's restart counter never reached the metrics service"
            time.sleep(0.5)

        with httpx.Client(base_url=base, timeout=30) as client:
            account = {"email": "sup@stu.ptit.edu.vn", "password": "mat-khau-dai-1", "display_name": "SV"}
            token = client.post("/v1/auth/register", json=account).json()["access_token"]
            client.headers["Authorization"] = f"Bearer {token}"

            chat.send_signal(signal.SIGKILL)
            chat.wait(10)
            deadline = time.monotonic() + 30
            while (ready := client.get("/readyz")).json()["backends"]["chat"] == "SERVING":
                assert time.monotonic() < deadline, "the gateway never saw chat go"
                time.sleep(0.05)
            # Chat is optional: the gateway stays ready and says what is degraded.
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "degraded" and "chat" in ready.json()["degraded"]
            assert ready.json()["backends"]["storage"] == "SERVING"
            # The others answer: the gateway, storage behind it (files, sessions), the metrics service.
            assert client.get("/healthz").status_code == 200
            assert client.get("/v1/files").status_code == 200
            assert client.get("/v1/sessions").status_code == 200
            assert httpx.get(f"{metrics_http}/metrics", timeout=10).status_code == 200

            # Chat comes back on its port, and the gateway sees it.
            deadline = time.monotonic() + 180
            while not grpc_serving(chat_address):
                assert time.monotonic() < deadline, f"chat did not come back:\n{run.text[-5000:]}"
                time.sleep(0.5)
            while (ready := client.get("/readyz")).json()["backends"]["chat"] != "SERVING":
                assert time.monotonic() < deadline, f"the gateway never saw chat again: {ready.text}"
                time.sleep(0.5)
            assert ready.status_code == 200 and "chat" not in ready.json()["degraded"]
            assert client.get("/v1/files").status_code == 200

        restarted = service_process(run.process.pid, "chat")
        assert restarted.pid != chat.pid
        for name, process in others.items():
            assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE, f"{name} was stopped"
            assert service_process(run.process.pid, name).pid == process.pid, f"{name} was restarted"
        assert psutil.pid_exists(postmaster)

        # Logged with the signal, and counted.
        lines = [line for line in log_lines(run.text) if line.get("service") == "launcher"]
        exited = [line for line in lines if line["msg"] == "service exited; restarting it"]
        assert [(line["child"], line["exit"]) for line in exited] == [("chat", "signal SIGKILL")]
        assert any(line["msg"] == "restarting service" and line["child"] == "chat" for line in lines)
        assert any(line["msg"] == "service answering again" and line["child"] == "chat" for line in lines)
        deadline = time.monotonic() + 60
        while restarts_counted(metrics_http) != 1.0:
            assert time.monotonic() < deadline, "the restart was not counted at the metrics service"
            time.sleep(0.5)
    assert run.exit_code == 0
    time.sleep(0.5)
    assert not psutil.pid_exists(restarted.pid) or restarted.status() == psutil.STATUS_ZOMBIE
    assert not (data_dir / "pg" / "postmaster.pid").exists()
