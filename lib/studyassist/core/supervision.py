"""Supervised children: one that dies is started again after a back-off; the others keep running.

``make run``'s launcher starts the services through a :class:`Supervisor`. A child that exits
while the mesh runs (killed, crashed, out of memory) is logged with its exit code or signal and
started again with the same command, environment and port after :meth:`Backoff.delay_s`: the delay
doubles with each failure in a row up to a cap, so a child that keeps crashing at start is still
retried, slowly, and is logged as a crash loop; a child that then stays up for
``Backoff.healthy_after_s`` starts over from the first delay. Every restart is reported to
``on_restart`` (the launcher counts them in its ``launcher.child_restarts`` metric).

The first start is different: a child that exits or hangs before it is first ready is an error
(:class:`RuntimeError`), so a wrong setting or a busy port is reported at once rather than retried
for ever. A restarted child only has to be *alive* (answer at all: its health check with any
status, the gateway's /healthz), not ready: readiness also depends on other services (the
gateway's needs storage), and killing a live child because a dependency is down would turn one
outage into a restart storm. One that is not even alive within its start timeout is killed and
backed off like any other failure.

Everything runs on the thread that calls :meth:`Supervisor.start` and :meth:`Supervisor.tick`, the
launcher's main thread: the children's death signal follows the thread that forked them (see
studyassist.core.children), and a restart cannot race a shutdown. The signal handler only calls
:meth:`Supervisor.request_stop`, which sets a flag; every spawn checks it first, and :meth:`stop`
runs on the same thread after the loop, so any child started just before the flag was set is in
the list it stops.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from studyassist.core.backoff import exponential_delay
from studyassist.core.children import dying_with_this_process

log = logging.getLogger("launcher")

# Failures in a row from which a child is logged as crash-looping (each further restart still happens).
CRASH_LOOP_AFTER = 3
# How often the loop looks at its children.
POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays before restarting a child: ``first_s``, times ``factor`` per failure in a row, at most ``cap_s``."""

    first_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0
    # A child that ran this long before it died was healthy: its failures in a row start again at one.
    healthy_after_s: float = 60.0

    def __post_init__(self) -> None:
        if not (self.first_s > 0 and self.factor >= 1 and self.cap_s >= self.first_s and self.healthy_after_s > 0):
            raise ValueError(f"invalid back-off {self}")

    def delay_s(self, failures: int) -> float:
        """The delay after the ``failures``-th failure in a row (1 for the first)."""
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures}")
        return exponential_delay(failures - 1, self.first_s, self.cap_s, self.factor)


def describe_exit(returncode: int) -> str:
    """``code 1`` or ``signal SIGKILL`` (Popen gives a signal as a negative return code)."""
    if returncode >= 0:
        return f"code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


class State(Enum):
    LAUNCHING = "launching"  # first start, waited for by Supervisor.start
    STARTING = "starting"  # restarted, not yet alive
    RUNNING = "running"
    WAITING = "waiting"  # exited; restarts at restart_at


class Child:
    """One supervised service and its current process."""

    def __init__(
        self,
        name: str,
        command: list[str],
        ready: Callable[[], bool],
        alive: Callable[[], bool],
        start_timeout_s: float,
    ) -> None:
        self.name = name
        self.command = command
        self.ready = ready
        self.alive = alive
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.state = State.LAUNCHING
        self.started_at = 0.0  # time.monotonic() of the latest spawn
        self.failures = 0  # runs in a row that ended before healthy_after_s
        self.restarts = 0
        self.restart_at = 0.0


class Supervisor:
    """The launcher's children in start order; see the module docstring."""

    def __init__(
        self,
        env: Mapping[str, str],
        backoff: Backoff | None = None,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.env = dict(env)
        self.backoff = backoff or Backoff()
        self.on_restart = on_restart
        self.children: list[Child] = []
        self.stopping = False

    def request_stop(self) -> None:
        """From a signal handler: no child is started after this."""
        self.stopping = True

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def _spawn(self, child: Child) -> bool:
        if self.stopping:
            return False
        # If the launcher dies, its children get SIGTERM (no preexec_fn: it hung here in a fork).
        child.process = subprocess.Popen(dying_with_this_process(child.command), env=self.env)
        child.started_at = time.monotonic()
        return True

    def start(
        self,
        name: str,
        command: list[str],
        ready: Callable[[], bool],
        timeout_s: float,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """Start a child and wait until ``ready()``, supervising the children already running meanwhile.

        A child that exits or is not ready within ``timeout_s`` here raises RuntimeError. Returns
        early, child not ready, when a stop is requested. ``alive`` (default: ``ready``) is what a
        restart of it waits for.
        """
        child = Child(name, command, ready, alive or ready, timeout_s)
        self.children.append(child)
        if not self._spawn(child):
            return
        assert child.process is not None
        deadline = child.started_at + timeout_s
        while not self.stopping:
            if ready():
                child.state = State.RUNNING
                log.info("service ready", extra={"fields": {"child": name}})
                return
            if (code := child.process.poll()) is not None:
                raise RuntimeError(f"{name} exited with {describe_exit(code)} during start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not healthy within {timeout_s:.0f}s")
            self.tick()
            time.sleep(POLL_S)

    def tick(self) -> None:
        """One look at every child: note exits, restart those whose back-off is over, see restarted ones alive."""
        for child in self.children:
            process = child.process
            if process is None or child.state is State.LAUNCHING:
                continue
            now = time.monotonic()
            if child.state in (State.RUNNING, State.STARTING) and (code := process.poll()) is not None:
                self._exited(child, code, now)
            elif child.state is State.STARTING:
                if child.alive():
                    child.state = State.RUNNING
                    log.info(
                        "service answering again",
                        extra={"fields": {"child": child.name, "restarts": child.restarts, "pid": process.pid}},
                    )
                elif now - child.started_at > child.start_timeout_s:
                    # Hung at start: killed, and its exit is handled (and backed off) like any other.
                    log.error(
                        "restarted service not answering in time; killing it",
                        extra={"fields": {"child": child.name, "timeout_s": child.start_timeout_s}},
                    )
                    process.kill()
            elif child.state is State.WAITING and now >= child.restart_at and self._spawn(child):
                child.state = State.STARTING
                child.restarts += 1
                log.warning(
                    "restarting service",
                    extra={
                        "fields": {
                            "child": child.name,
                            "restarts": child.restarts,
                            "failures": child.failures,
                            "pid": child.process.pid if child.process else None,
                        }
                    },
                )
                if self.on_restart is not None:
                    self.on_restart(child.name)

    def _exited(self, child: Child, code: int, now: float) -> None:
        ran_s = now - child.started_at
        at_start = child.state is State.STARTING
        healthy = not at_start and ran_s >= self.backoff.healthy_after_s
        child.failures = 1 if healthy else child.failures + 1
        delay = self.backoff.delay_s(child.failures)
        child.state = State.WAITING
        child.restart_at = now + delay
        fields = {
            "child": child.name,
            "exit": describe_exit(code),
            "exit_code": code,
            "ran_s": round(ran_s, 1),
            "failures": child.failures,
            "restarts": child.restarts,
            "restart_in_s": delay,
        }
        if child.failures >= CRASH_LOOP_AFTER:
            where = "at start" if at_start else "soon after start"
            log.error(f"service keeps crashing {where}; restarting it with back-off", extra={"fields": fields})
        else:
            log.error("service exited; restarting it", extra={"fields": fields})

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every child, the last started first: each drains while the services it calls (and
        the metrics service receiving its last telemetry) are still up. No restart follows."""
        self.stopping = True
        for child in reversed(self.children):
            process = child.process
            if process is None or process.poll() is not None:
                continue
            log.info("stopping", extra={"fields": {"child": child.name}})
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("killing", extra={"fields": {"child": child.name}})
                process.kill()
                process.wait()
