"""``python -m <service>``: read settings, set up logging and telemetry, build, serve.

A wrong setting, a port that cannot be bound or a dependency that cannot be reached at start
ends the process with exit code 2 and one clear line on stderr, not a traceback.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvloop

from studyassist.core.config import CommonSettings, ConfigError
from studyassist.core.identity import configure_mesh
from studyassist.core.logs import setup_logging
from studyassist.core.server import Server, run
from studyassist.core.telemetry import Telemetry, resolve_endpoint, setup_telemetry

log = logging.getLogger(__name__)

S = TypeVar("S")


class StartupError(Exception):
    """Something the service needs at start is not there (a database, a model directory)."""


def run_service(
    name: str,
    load_settings: Callable[[], S],
    build: Callable[[S, CommonSettings, Telemetry], Awaitable[tuple[Server, int]]],
    *,
    metrics_addr: Callable[[S], str],
) -> None:
    try:
        common = CommonSettings.from_env()
        settings = load_settings()
        # Before the server is built: it verifies callers with this key, and its clients mint with it.
        configure_mesh(os.environ, common, name)
    except ConfigError as exc:
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(name, common.log_level)
    telemetry = setup_telemetry(
        name,
        resolve_endpoint(common.otlp_endpoint, metrics_addr(settings)),
        export_interval_s=common.metric_export_interval_s,
        span_delay_s=common.span_export_delay_s,
    )

    async def main() -> None:
        server, port = await build(settings, common, telemetry)
        freeze_startup_objects()
        await run(
            server,
            grace=common.shutdown_grace_seconds,
            ready=lambda: log.info("serving", extra={"fields": {"port": port, "host": common.bind_host}}),
        )

    try:
        uvloop.run(main())
    except (StartupError, OSError, ConfigError) as exc:
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
    finally:
        telemetry.shutdown()


# Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def freeze_startup_objects() -> None:
    """Once started: what start-up built (modules, classes, descriptor pools, the SDKs' and gRPC's
    objects: about 100,000) is moved out of the garbage collector's sight, and young collections
    run less often.

    Each full collection otherwise walks all of them with the event loop stopped: 18-59 ms each in
    chat on a busy 2-core machine, landing on whatever first token was under way, about 1-3 ms once
    frozen. Every request allocates a few hundred objects that die young; with CPython's default
    threshold the collector ran every few requests (about 4 % of the gateway's CPU under load).
    Cycles are still collected, in bigger, rarer batches; garbage is collected first so that none
    of it is kept for good.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
