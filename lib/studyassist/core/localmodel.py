"""A local transformers model directory served as an OpenAI-compatible LLM by `transformers serve`.

The chat service uses it when ``LLM_MODEL_DIR`` is set: it validates the directory at start
(``env_model_dir``), starts the server as its child on a free 127.0.0.1 port
(``start_local_model``), waits until ``GET /v1/models`` answers (``LocalModelServer.wait_ready``)
and stops it on shutdown (``LocalModelServer.stop``). The launcher validates the same setting
with ``env_model_dir`` and probes LLM servers with ``openai_server_answers``.

Nothing is left behind:
- the child dies with its parent even when the parent is killed with SIGKILL
  (``studyassist.core.children``: an exec shim, not ``preexec_fn``, which is unsafe in a threaded
  parent such as a gRPC process); call ``start_local_model`` from a thread that lives as long as
  the process (the main thread, or the event loop's), never from a worker thread
  (``asyncio.to_thread``) — waiting for readiness in one is fine;
- the child runs in its own session, so a Ctrl-C in a terminal reaches the parent only; the parent
  stops the model after it has drained its own calls;
- its output (uvicorn and transformers, plain text) is re-logged line by line through ``logging``
  (JSON lines like the rest of the log), uvicorn's per-request INFO lines at debug level; the
  last lines are kept for the error message when it fails to start.

No asyncio subprocess API is used: asyncio child watchers inside gRPC/uvloop processes have
crashed here before, so this is plain ``subprocess.Popen`` and blocking waits meant for a thread.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from studyassist.core.children import dying_with_this_process
from studyassist.core.config import ConfigError, env_str

log = logging.getLogger("studyassist.localmodel")

# How long `transformers serve` may take to answer GET /v1/models after it was started (it imports
# torch and loads the weights first; a big model on CPU takes a while).
DEFAULT_START_TIMEOUT_S = 180.0
# Lines of the server's output kept for a start-up error message.
OUTPUT_TAIL_LINES = 40


def env_model_dir(env: Mapping[str, str], name: str = "LLM_MODEL_DIR") -> Path | None:
    """``name``: a local transformers model directory (absolute, resolved), or None when unset.

    Raises ConfigError naming the variable when the directory is missing or holds no config.json.
    """
    raw = env_str(env, name, "")
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"{name}={raw!r} is not a directory")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{name}={raw!r} is not a transformers model directory (no config.json)")
    return path


def openai_server_answers(base_url: str, timeout_s: float = 1.0) -> bool:
    """Whether an OpenAI-compatible server answers ``GET {base_url}/models`` with 200."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalModelError(Exception):
    """`transformers serve` could not be started, or exited before it answered."""


@dataclass
class LocalModelServer:
    """A running `transformers serve` child serving one model directory."""

    model_dir: Path
    process: subprocess.Popen[bytes]
    port: int
    output_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=OUTPUT_TAIL_LINES))
    # Set by stop(): an exit after it is expected, not worth a warning.
    stopping: bool = False
    # The thread re-logging its output (ends when the child's output closes).
    relay: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> bool:
        """Block until the server answers (True) or ``timeout_s`` passes (False).

        Raises LocalModelError when the child exits first (with the end of its output). Blocking:
        from async code run it in a thread.
        """
        deadline = time.monotonic() + timeout_s
        while not openai_server_answers(self.base_url):
            if self.process.poll() is not None:
                if self.relay is not None:
                    self.relay.join(2.0)  # its last lines say why
                raise LocalModelError(self._exit_message("during start"))
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)
        log.info(
            "local model served",
            extra={"fields": {"model_dir": str(self.model_dir), "base_url": self.base_url, "pid": self.pid}},
        )
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns once the child is reaped. Blocking."""
        self.stopping = True
        if self.process.poll() is None:
            log.info("stopping local model server", extra={"fields": {"pid": self.pid}})
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("killing local model server", extra={"fields": {"pid": self.pid}})
                self.process.kill()
                self.process.wait()

    def _exit_message(self, when: str = "") -> str:
        tail = " | ".join(list(self.output_tail)[-5:])
        message = f"transformers serve for {self.model_dir} exited with code {self.process.returncode}"
        message = f"{message} {when}" if when else message
        return f"{message}: {tail}" if tail else message


def start_local_model(
    model_dir: Path,
    *,
    port: int = 0,
    device: str = "",
    env: Mapping[str, str] | None = None,
) -> LocalModelServer:
    """Start `transformers serve` for ``model_dir`` on 127.0.0.1 (``port`` 0: a free one); do not wait.

    Call it from a long-lived thread (see the module's docstring); then ``wait_ready``.
    Raises LocalModelError when transformers (with its serving extra) is not installed.
    """
    if importlib.util.find_spec("transformers") is None:
        raise LocalModelError(
            "LLM_MODEL_DIR needs the transformers package with its serving extra (pip install 'transformers[serving]')"
        )
    port = port or free_local_port()
    serve = [
        sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if device:
        serve += ["--device", device]
    command = dying_with_this_process(serve)
    child_env = {**(os.environ if env is None else env)}
    # A local directory needs no network: never wait on the Hub, and no progress bars in the log.
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        child_env.setdefault(name, value)
    child_env["PYTHONUNBUFFERED"] = "1"
    try:
        process = subprocess.Popen(
            command,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise LocalModelError(f"cannot start transformers serve: {exc}") from None
    server = LocalModelServer(model_dir, process, port)
    server.relay = threading.Thread(target=_relay_output, args=(server,), daemon=True, name="transformers-serve-log")
    server.relay.start()
    log.info(
        "starting local model server",
        extra={"fields": {"model_dir": str(model_dir), "port": port, "pid": process.pid}},
    )
    return server


def _relay_output(server: LocalModelServer) -> None:
    """Re-log the child's output until it exits (its pipe closes)."""
    assert server.process.stdout is not None
    fields = {"source": "transformers serve", "pid": server.pid}
    for raw in server.process.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            continue
        server.output_tail.append(line)
        # uvicorn's "INFO:" lines (one per request, start-up chatter) only when debugging.
        level = logging.DEBUG if line.startswith("INFO:") else logging.INFO
        log.log(level, line, extra={"fields": fields})
    server.process.wait()
    if not server.stopping:
        # Requests fail over to extractive answers (the LLM probe notices); say why here.
        log.error(server._exit_message(), extra={"fields": fields})


__all__ = [
    "DEFAULT_START_TIMEOUT_S",
    "LocalModelError",
    "LocalModelServer",
    "env_model_dir",
    "free_local_port",
    "openai_server_answers",
    "start_local_model",
]
