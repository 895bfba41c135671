"""``make run``: the whole mesh on one machine with nothing to configure.

Starts an embedded PostgreSQL (pgserver, data in DATA_DIR/pg) unless DATABASE_URL is set, uses
Redis at REDIS_URL and the LLM at LLM_BASE_URL when they answer (or, with LLM_MODEL_DIR, the local
transformers model directory that the chat service serves itself with `transformers serve`, see
studyassist.core.localmodel), starts the five services in dependency order, waits for each one's
health, prints the address and what it found. A service that dies later is started again on its
port with back-off while the others and PostgreSQL keep running (studyassist.core.supervision),
each restart logged and counted in the ``launcher.child_restarts`` metric (Prometheus:
``launcher_child_restarts_total{child=...}``). Ctrl-C or SIGTERM stops the services in reverse
order, then PostgreSQL; children also die with the launcher (PR_SET_PDEATHSIG), so nothing is left
behind (chat stops its model server, which also dies with chat).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from studyassist.core.config import CommonSettings, ConfigError, env_service_port, env_str
from studyassist.core.embeddedpg import start_embedded_postgres
from studyassist.core.identity import assertion_metadata, configure_mesh, service_subject
from studyassist.core.localmodel import DEFAULT_START_TIMEOUT_S, env_model_dir, openai_server_answers
from studyassist.core.logs import setup_logging
from studyassist.core.supervision import POLL_S, Supervisor
from studyassist.core.telemetry import resolve_endpoint, setup_telemetry

log = logging.getLogger("launcher")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_LLM_BASE_URL = "http://localhost:1234/v1"
START_TIMEOUT_S = 180.0


@dataclass(frozen=True, slots=True)
class ServiceDef:
    name: str
    # gRPC services are checked with grpc.health.v1; the gateway over HTTP /readyz.
    http: bool = False

    @property
    def port_var(self) -> str:
        return f"{self.name.upper()}_PORT"


SERVICES = (
    ServiceDef("metrics"),
    ServiceDef("embedding"),
    ServiceDef("storage"),
    ServiceDef("chat"),
    ServiceDef("gateway", http=True),
)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def llm_answers(base_url: str) -> bool:
    return openai_server_answers(base_url, timeout_s=1.0)


@contextlib.contextmanager
def database(data_dir: Path) -> Iterator[str]:
    """DATABASE_URL when set, else an embedded PostgreSQL 16 + pgvector stopped on exit."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    pg_dir = data_dir / "pg"
    pg_dir.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL", extra={"fields": {"data_dir": str(pg_dir)}})
    try:
        server = start_embedded_postgres(pg_dir, cleanup_mode="stop")
    except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
        # pgserver logged PostgreSQL's own output above; this is the one line that says what failed.
        raise RuntimeError(f"embedded PostgreSQL in {pg_dir} did not start: {exc}") from None
    try:
        yield server.get_uri()
    finally:
        log.info("stopping embedded PostgreSQL")
        server.cleanup()


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def grpc_answers(address: str) -> bool:
    """The process answers its health check, with whatever status (alive, if not ready)."""
    with grpc.insecure_channel(address) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
    return True


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def chat_llm(address: str) -> tuple[bool, str]:
    """What chat says of its LLM: (answers, base URL); (False, "") when it cannot say."""
    from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            # Chat verifies every caller: the launcher signs with the mesh key its children share.
            status = chat_pb2_grpc.ChatServiceStub(channel).GetChatStatus(
                chat_pb2.GetChatStatusRequest(),
                metadata=assertion_metadata(service_subject("launcher"), "chat"),
                timeout=5.0,
            )
        except grpc.RpcError:
            return False, ""
    return bool(status.llm_available), str(status.llm_base_url)


def summary(
    host: str,
    port: int,
    found_redis: bool,
    redis_url: str,
    found_llm: bool,
    llm_base_url: str,
    model_dir: Path | None = None,
) -> str:
    shown_host = "localhost" if host in {"127.0.0.1", "0.0.0.0"} else host
    database_line = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded (pgserver)"
    redis_line = redis_url if found_redis else "not found (in-process caches only)"
    llm_line = llm_base_url if found_llm else f"not found at {llm_base_url} (extractive answers until one answers)"
    if model_dir is not None:
        llm_line = (
            f"local model {model_dir}, served by chat with transformers serve at {llm_base_url}"
            if found_llm
            else f"local model {model_dir}, still loading in chat (extractive answers until it answers)"
        )
    return "\n".join(
        [
            "",
            f"  PTIT Study Assistant is up: http://{shown_host}:{port}",
            f"  PostgreSQL: {database_line}",
            f"  Redis:      {redis_line}",
            f"  LLM:        {llm_line}",
            "  Ctrl-C stops everything.",
            "",
        ]
    )


def main() -> int:
    try:
        common = CommonSettings.from_env()
        ports = {s.name: env_service_port(os.environ, s.name) for s in SERVICES}
        redis_url = env_str(os.environ, "REDIS_URL", DEFAULT_REDIS_URL)
        llm_base_url = env_str(os.environ, "LLM_BASE_URL", DEFAULT_LLM_BASE_URL)
        model_dir = env_model_dir(os.environ, "LLM_MODEL_DIR")
    except ConfigError as exc:
        print(f"launcher: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging("launcher", common.log_level)
    host = common.bind_host
    busy = [f"{s.name} ({s.port_var}={ports[s.name]})" for s in SERVICES if not _port_free(host, ports[s.name])]
    if busy:
        print(
            f"launcher: ports already in use on {host}: {', '.join(busy)}; is the mesh already running?",
            file=sys.stderr,
        )
        return 2

    # Set by the signal handler; the supervisor reads it before every start (see supervision).
    meshes: list[Supervisor] = []
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for mesh in meshes:
            mesh.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    found_redis = redis_answers(redis_url)
    found_llm = model_dir is None and llm_answers(llm_base_url)
    common.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # The key the services share (DATA_DIR/mesh_key in development), made before they start.
        configure_mesh(os.environ, common, "launcher")
    except ConfigError as exc:
        print(f"launcher: configuration error: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        try:
            database_url = stack.enter_context(database(common.data_dir))
        except RuntimeError as exc:
            print(f"launcher: {exc}", file=sys.stderr)
            return 1
        addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        env = {
            **os.environ,
            "DATA_DIR": str(common.data_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url if found_redis else "",
            "LLM_BASE_URL": llm_base_url,
            # Chat serves it (validated above, passed on resolved).
            **({"LLM_MODEL_DIR": str(model_dir)} if model_dir is not None else {}),
            **{s.port_var: str(ports[s.name]) for s in SERVICES},
            "CHAT_ADDR": addresses["chat"],
            "STORAGE_ADDR": addresses["storage"],
            "EMBEDDING_ADDR": addresses["embedding"],
            "METRICS_ADDR": addresses["metrics"],
        }
        # The launcher's own metrics go where the services' go (the metrics service it starts first).
        telemetry = setup_telemetry(
            "launcher",
            resolve_endpoint(common.otlp_endpoint, addresses["metrics"]),
            export_interval_s=common.metric_export_interval_s,
        )
        restarts = telemetry.meter.create_counter(
            "launcher.child_restarts",
            unit="{restart}",
            description="Services the launcher started again after they exited",
        )
        for service in SERVICES:
            # Every series exists from the start at 0, so a rate over the first restart is right.
            restarts.add(0, {"child": service.name})
        mesh = Supervisor(env, on_restart=lambda name: restarts.add(1, {"child": name}))
        meshes.append(mesh)
        if stopping:
            mesh.request_stop()
        try:
            for service in SERVICES:
                if mesh.stopping:
                    break
                command = [sys.executable, "-m", service.name]
                if service.http:
                    # Ready: its backends answer (/readyz); alive, after a restart: it answers (/healthz).
                    url = f"http://127.0.0.1:{ports[service.name]}"
                    mesh.start(
                        service.name,
                        command,
                        lambda url=url: http_ready(f"{url}/readyz"),  # type: ignore[misc]
                        START_TIMEOUT_S,
                        alive=lambda url=url: http_ready(f"{url}/healthz"),  # type: ignore[misc]
                    )
                else:
                    address = addresses[service.name]
                    # With LLM_MODEL_DIR, chat reports healthy once its model server answers.
                    timeout_s = START_TIMEOUT_S
                    if service.name == "chat" and model_dir is not None:
                        timeout_s += DEFAULT_START_TIMEOUT_S
                    mesh.start(
                        service.name,
                        command,
                        lambda address=address: grpc_serving(address),  # type: ignore[misc]
                        timeout_s,
                        alive=lambda address=address: grpc_answers(address),  # type: ignore[misc]
                    )
            if model_dir is not None and not mesh.stopping:
                found_llm, llm_base_url = chat_llm(addresses["chat"])
            if not mesh.stopping:
                print(
                    summary(host, ports["gateway"], found_redis, redis_url, found_llm, llm_base_url, model_dir),
                    flush=True,
                )
            # Supervise until Ctrl-C / SIGTERM: a child that dies is restarted, the others keep running.
            while not mesh.stopping:
                mesh.tick()
                time.sleep(POLL_S)
        except RuntimeError as exc:
            print(f"launcher: {exc}", file=sys.stderr)
            return 1
        finally:
            # The last export (restarts counted since the previous one) while the metrics service is up.
            telemetry.shutdown()
            mesh.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
