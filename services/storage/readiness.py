"""Storage is ready only while its database answers.

A probe asks PostgreSQL ``SELECT 1`` every ``interval_s`` on a connection of its own (not the
pool's: a pool busy with real work is not a database that is down, and a probe must not queue
behind it), bounded by ``timeout_s`` so a frozen database counts as down. While it fails, the
health entries "" and the StorageService say NOT_SERVING (Kubernetes' readinessProbe and the
gateway's /readyz take storage out); once it answers again they say SERVING. The liveness entry
(studyassist.core.server.LIVENESS_SERVICE) is left alone, so an outage never restarts the pods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseReadiness:
    def __init__(
        self,
        url: str,
        health: HealthServicer,
        names: Sequence[str],
        *,
        interval_s: float = 2.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.health = health
        self.names = list(names)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.ready = True  # the database answered the migrations just before
        self._conn: asyncpg.Connection | None = None
        self._loop: asyncio.Task[None] | None = None

    async def check(self) -> str | None:
        """None while the database answers; else why not."""
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(self.url)
                await self._conn.fetchval("SELECT 1")
        except Exception as exc:  # whatever it is (refused, reset, timed out, shutting down): not ready
            self._drop()
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()  # no goodbye to a database that may not answer
            self._conn = None

    async def probe_once(self) -> bool:
        problem = await self.check()
        ready = problem is None
        if ready != self.ready:
            if ready:
                log.info("database answers again: storage ready")
            else:
                log.warning("database unreachable: storage not ready", extra={"fields": {"error": problem}})
        self.ready = ready
        # Set every time, not only on a change: the server's start sets SERVING after the first
        # probe may have run. Watch callers see only changes.
        for name in self.names:
            await self.health.set(name, SERVING if ready else NOT_SERVING)
        return ready

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.probe_once()

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="storage-readiness")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        self._drop()
