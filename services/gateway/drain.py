"""Draining on SIGTERM: tell clients to go elsewhere before the socket closes.

The first SIGTERM starts the drain (``python -m gateway`` calls :meth:`Drain.begin`); for
``DRAIN_S`` seconds the gateway keeps its socket and:

- answers every new request but ``/healthz`` with 503, ``Retry-After`` and ``Connection: close``
  (reason SERVER_DRAINING), so a client retries, on a new connection that the load balancer
  gives to another replica;
- fails ``/readyz`` (503, ``"status": "draining"``), so Kubernetes and load balancers stop
  sending traffic here;
- ends every answer stream at once with ``event: close`` carrying the same error body (reason
  SERVER_DRAINING, ``retry_after_s``): the web app reconnects a watch and gives the question back
  for an answer that was cut (services/gateway/web/src/api/sse.ts).

Then uvicorn stops accepting and lets the requests still in flight finish within
SHUTDOWN_GRACE_SECONDS. ``/healthz`` stays 200 throughout: the process is alive, only leaving.
"""

from __future__ import annotations

import asyncio
import math

import grpc
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.responses import HttpError, error_response, json_response

DRAINING_REASON = "SERVER_DRAINING"
# Paths answered as usual while draining: liveness (the process is fine, it is leaving).
PASS_THROUGH = frozenset({"/healthz"})


class Drain:
    def __init__(self, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        self._begun = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self._begun.is_set()

    def begin(self) -> None:
        self._begun.set()

    async def wait(self) -> None:
        await self._begun.wait()

    def error(self) -> HttpError:
        return HttpError(
            grpc.StatusCode.UNAVAILABLE,
            "the gateway is restarting; try again",
            headers={"Retry-After": str(self.retry_after_s), "Connection": "close"},
            reason=DRAINING_REASON,
            args={"retry_after_s": self.retry_after_s},
        )


class DrainGate:
    """ASGI middleware: while draining, 503 for new requests, a failing /readyz."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.drain.draining or scope["path"] in PASS_THROUGH:
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/readyz":
            response = json_response(
                {"status": "draining", "ready": False},
                503,
                headers={"Cache-Control": "no-store", "Connection": "close"},
            )
        else:
            response = error_response(self.drain.error())
        await response(scope, receive, send)
