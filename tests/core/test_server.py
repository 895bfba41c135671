"""The shared server: domain errors become status codes, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from studyassist.core.channels import create_channel
from studyassist.core.errors import InvalidArgument, NotFound
from studyassist.core.testing import serving, stand_in_server
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc


class ProbeServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    """A servicer whose behaviour each test picks through the request."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        text = request.texts[0].decode() if request.texts else ""
        if text == "bad":
            raise InvalidArgument("text is bad")
        if text == "missing":
            raise NotFound("no such text")
        if text == "bug":
            raise RuntimeError("secret internal detail")
        if text == "slow":
            await self.release.wait()
        return embedding_pb2.EmbedResponse(model_id=text, dimension=len(text))

    async def Info(
        self, request: embedding_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.InfoResponse:
        raise NotFound("not part of this probe")

    async def Stats(
        self, request: embedding_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.StatsResponse:
        raise NotFound("not part of this probe")


def build(servicer: ProbeServicer):  # type: ignore[no-untyped-def]
    async def _build():  # type: ignore[no-untyped-def]
        return stand_in_server(servicer)

    return _build


async def test_domain_errors_map_to_status_codes_and_bugs_hide_details() -> None:
    async with serving(build(ProbeServicer())) as address, create_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        assert (await stub.Embed(embedding_pb2.EmbedRequest(texts=[b"ok"]))).model_id == "ok"
        for text, code in [(b"bad", grpc.StatusCode.INVALID_ARGUMENT), (b"missing", grpc.StatusCode.NOT_FOUND)]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Embed(embedding_pb2.EmbedRequest(texts=[text]))
            assert info.value.code() == code
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Embed(embedding_pb2.EmbedRequest(texts=[b"bug"]))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (info.value.details() or "")


async def test_health_and_reflection() -> None:
    async with serving(build(ProbeServicer())) as address, create_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="studyassist.embedding.v1.EmbeddingService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        def list_services() -> list[str]:
            # The reflection client is synchronous; it must not block the loop serving the call.
            with grpc.insecure_channel(address) as sync_channel:
                return list(ProtoReflectionDescriptorDatabase(sync_channel).get_services())

        assert "studyassist.embedding.v1.EmbeddingService" in await asyncio.to_thread(list_services)


async def test_graceful_stop_lets_in_flight_calls_finish_and_reports_not_serving() -> None:
    servicer = ProbeServicer()
    server, port = await build(servicer)()
    await server.start()
    async with create_channel(f"127.0.0.1:{port}") as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.Embed(embedding_pb2.EmbedRequest(texts=[b"slow"])))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(server.stop(grace=5.0))
        await asyncio.sleep(0.2)
        status = await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)  # type: ignore[arg-type]
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        servicer.release.set()
        assert (await in_flight).model_id == "slow"
        await stopping


async def test_only_server_faults_mark_the_span_as_an_error() -> None:
    """A caller's mistake (INVALID_ARGUMENT, NOT_FOUND) is traced as such, not as the server failing."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    servicer = ProbeServicer()

    async def build_traced():  # type: ignore[no-untyped-def]
        return stand_in_server(servicer, tracer=provider.get_tracer("test"))

    async with serving(build_traced) as address, create_channel(address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        await stub.Embed(embedding_pb2.EmbedRequest(texts=[b"ok"]))
        for text in (b"bad", b"missing", b"bug"):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Embed(embedding_pb2.EmbedRequest(texts=[text]))
    statuses = [
        (span.attributes["rpc.grpc.status_code"], span.status.status_code)
        for span in exporter.get_finished_spans()
        if span.attributes
    ]
    assert statuses == [
        (grpc.StatusCode.OK.value[0], StatusCode.UNSET),
        (grpc.StatusCode.INVALID_ARGUMENT.value[0], StatusCode.UNSET),
        (grpc.StatusCode.NOT_FOUND.value[0], StatusCode.UNSET),
        (grpc.StatusCode.INTERNAL.value[0], StatusCode.ERROR),
    ]
