"""``python -m gateway``: settings, logging, telemetry, then uvicorn (uvloop, httptools) until SIGTERM.

Mirrors studyassist.core.bootstrap.run_service for an HTTP server: a bad setting or a port that
cannot be bound exits 2 with one line; the "serving" log line carries the bound port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn
import uvloop
from studyassist.core.bootstrap import freeze_startup_objects
from studyassist.core.config import CommonSettings, ConfigError
from studyassist.core.identity import configure_mesh
from studyassist.core.logs import setup_logging
from studyassist.core.telemetry import resolve_endpoint, setup_telemetry

from gateway.config import Settings, resolve_jwt_secret
from gateway.connections import guarded_protocol
from gateway.drain import Drain
from gateway.server import build_app

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after draining, so the process would die by the signal; we own
    the signals instead and exit 0 after a graceful stop, as the gRPC services do.

    The first signal starts the drain (gateway.drain: 503 with Retry-After, /readyz failing, answer
    streams closed with an event) and stops the server ``drain_s`` later; a second one stops it now,
    a third stops waiting for open requests."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_s = drain_s

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _stop(self) -> None:
        if not self.drain.draining:
            log.info("draining", extra={"fields": {"drain_s": self.drain_s}})
            self.drain.begin()
            asyncio.get_running_loop().call_later(self.drain_s, self._exit)
            return
        if self.should_exit:
            self.force_exit = True  # another signal: stop waiting for open requests
        self.should_exit = True

    def _exit(self) -> None:
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def main() -> None:
    try:
        common = CommonSettings.from_env()
        settings = Settings.from_env()
        jwt_secret = resolve_jwt_secret(settings, common)
        # The key its calls to the backends are signed with (studyassist.core.identity).
        configure_mesh(os.environ, common, "gateway")
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging("gateway", common.log_level)
    telemetry = setup_telemetry(
        "gateway",
        resolve_endpoint(common.otlp_endpoint, settings.metrics_addr),
        export_interval_s=common.metric_export_interval_s,
        span_delay_s=common.span_export_delay_s,
    )

    async def serve() -> None:
        sock = bind(common.bind_host, settings.port)
        port = sock.getsockname()[1]
        app = build_app(settings, common, telemetry, jwt_secret)
        config = uvicorn.Config(
            app,
            # httptools, with bounds on slow headers and on clients that do not read.
            http=guarded_protocol(settings.header_timeout_s, settings.send_idle_timeout_s),
            loop="none",
            lifespan="on",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=max(1, int(common.shutdown_grace_seconds)),
        )
        drain = app.state.drain
        assert isinstance(drain, Drain)
        server = _Server(config, drain, settings.drain_s)

        async def announce() -> None:
            while not server.started:
                if server.should_exit:
                    return
                await asyncio.sleep(0.02)
            freeze_startup_objects()
            log.info("serving", extra={"fields": {"port": port, "host": common.bind_host}})

        announcer = asyncio.create_task(announce())
        # uvicorn handles SIGTERM/SIGINT: stop accepting, drain for the grace period, run lifespan shutdown.
        await server.serve(sockets=[sock])
        announcer.cancel()
        log.info("stopped")

    try:
        uvloop.run(serve())
    except (OSError, ConfigError) as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    main()
