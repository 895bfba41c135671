"""The metrics service in-process on port 0 (gRPC and /metrics), and a probe service to time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
from metrics.config import Settings
from metrics.server import MetricsApp, assemble
from studyassist.core.config import CommonSettings
from studyassist.core.errors import InvalidArgument, Unavailable
from studyassist.core.server import Server
from studyassist.core.telemetry import Telemetry, setup_telemetry
from studyassist.core.testing import StandInServicer, stand_in_server
from studyassist.embedding.v1 import embedding_pb2


@asynccontextmanager
async def metrics_service(
    env: dict[str, str] | None = None, clock: Callable[[], float] | None = None
) -> AsyncIterator[MetricsApp]:
    settings = Settings.from_env({"METRICS_PORT": "0", "METRICS_HTTP_PORT": "0", **(env or {})})
    common = CommonSettings.from_env({"BIND_HOST": "127.0.0.1"})
    telemetry = setup_telemetry("metrics", None)
    app = await (assemble(settings, common, telemetry, clock=clock) if clock else assemble(settings, common, telemetry))
    await app.server.start()
    try:
        yield app
    finally:
        await app.server.stop(grace=0.5)
        telemetry.shutdown()


class ProbeServicer(StandInServicer):
    """A user-facing service stand-in: "bad" fails with INVALID_ARGUMENT (the caller's mistake),
    "broken" with UNAVAILABLE (a server fault), anything else answers."""

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        text = request.texts[0].decode() if request.texts else ""
        if text == "bad":
            raise InvalidArgument("text is bad")
        if text == "broken":
            raise Unavailable("the probe is broken")
        await asyncio.sleep(0)
        return embedding_pb2.EmbedResponse(model_id=text, dimension=len(text))


def build_probe(telemetry: Telemetry) -> tuple[Server, int]:
    return stand_in_server(ProbeServicer(), meter=telemetry.meter, tracer=telemetry.tracer)


async def flush(telemetry: Telemetry) -> None:
    # The exporters block their thread until the receiver, on this very loop, answers.
    await asyncio.to_thread(telemetry.tracer_provider.force_flush, 10_000)
    await asyncio.to_thread(telemetry.meter_provider.force_flush, 10_000)
