"""Client channels (studyassist.core.channels) against real servers on port 0: idempotent methods
are retried on UNAVAILABLE by the channel's retry policy (and only those), every call gets the
default deadline, one channel spreads calls round robin over every address it resolves, and a
client-streaming call reports the status its server ended it with."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc
import pytest
from studyassist.core.channels import create_channel, stream_unary_response
from studyassist.core.errors import InvalidArgument, Unavailable
from studyassist.core.identity import assertion_metadata, service_subject
from studyassist.core.server import ServiceSpec, create_server
from studyassist.core.testing import StandInServicer, stand_in_server
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

SERVICE = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


class FlakyServicer(StandInServicer):
    """Fails the first ``failures`` calls of each method with UNAVAILABLE; "slow" texts never
    answer until released; every answer names the server."""

    def __init__(self, name: str, failures: int = 0) -> None:
        self.name = name
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.release = asyncio.Event()

    def _count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.calls[method] <= self.failures:
            raise Unavailable(f"{self.name} is not ready yet")

    async def Info(
        self, request: embedding_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.InfoResponse:
        self._count("Info")
        return embedding_pb2.InfoResponse(model_id=self.name)

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        self._count("Embed")
        if request.texts and request.texts[0] == b"slow":
            await self.release.wait()
        return embedding_pb2.EmbedResponse(model_id=self.name)


@asynccontextmanager
async def servers(*servicers: FlakyServicer) -> AsyncIterator[list[int]]:
    """Each servicer on its own real server (studyassist.core.server.create_server) on port 0."""
    async with AsyncExitStack() as stack:
        ports = []
        for servicer in servicers:
            server, port = stand_in_server(servicer)
            await server.start()
            stack.push_async_callback(server.stop, 0.5)
            ports.append(port)
        yield ports


async def test_idempotent_method_is_retried_on_unavailable() -> None:
    flaky = FlakyServicer("a", failures=1)
    async with (
        servers(flaky) as [port],
        create_channel(f"127.0.0.1:{port}", idempotent=[(SERVICE, "Info")]) as channel,
    ):
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        reply = await stub.Info(embedding_pb2.InfoRequest())
        assert reply.model_id == "a"
        assert flaky.calls["Info"] == 2  # the first attempt failed, the channel tried again

        # Embed is not declared idempotent: its failure reaches the caller, tried once.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Embed(embedding_pb2.EmbedRequest(texts=[b"x"]))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert flaky.calls["Embed"] == 1


async def test_retries_give_up_after_max_attempts() -> None:
    down = FlakyServicer("down", failures=100)
    async with (
        servers(down) as [port],
        create_channel(f"127.0.0.1:{port}", idempotent=[(SERVICE, "Info")]) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await embedding_pb2_grpc.EmbeddingServiceStub(channel).Info(embedding_pb2.InfoRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert down.calls["Info"] == 4  # retryPolicy.maxAttempts


async def test_default_deadline_expires_on_a_slow_method() -> None:
    slow = FlakyServicer("slow")
    async with servers(slow) as [port], create_channel(f"127.0.0.1:{port}", default_timeout=0.3) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Embed(embedding_pb2.EmbedRequest(texts=[b"slow"]))
        elapsed = asyncio.get_running_loop().time() - started
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.25 <= elapsed < 5, elapsed
        # The caller's own timeout wins over the default.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Embed(embedding_pb2.EmbedRequest(texts=[b"slow"]), timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        slow.release.set()
        assert (await stub.Embed(embedding_pb2.EmbedRequest(texts=[b"fast"]))).model_id == "slow"


async def test_round_robin_spreads_calls_over_every_address() -> None:
    first, second = FlakyServicer("first"), FlakyServicer("second")
    async with servers(first, second) as [p1, p2], create_channel(f"ipv4:127.0.0.1:{p1},127.0.0.1:{p2}") as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        # Round robin picks among the connected subchannels: call until both have answered once.
        seen: set[str] = set()
        for _ in range(500):
            seen.add((await stub.Info(embedding_pb2.InfoRequest())).model_id)
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        assert seen == {"first", "second"}
        first.calls.clear()
        second.calls.clear()
        answered = [(await stub.Info(embedding_pb2.InfoRequest())).model_id for _ in range(20)]
    assert (first.calls["Info"], second.calls["Info"]) == (10, 10), answered
    assert all(a != b for a, b in itertools.pairwise(answered)), answered


class RefusingUploads(storage_pb2_grpc.StorageServiceServicer):
    """Refuses every upload after its first message, as storage refuses a file of the wrong type."""

    async def UploadFile(
        self, request_iterator: AsyncIterator[storage_pb2.UploadFileRequest], context: grpc.aio.ServicerContext
    ) -> storage_pb2.File:
        await anext(aiter(request_iterator))
        raise InvalidArgument("unsupported file type")


async def many_chunks() -> AsyncIterator[storage_pb2.UploadFileRequest]:
    yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name="a.exe"))
    for _ in range(1000):
        yield storage_pb2.UploadFileRequest(chunk=b"x" * 65536)


@asynccontextmanager
async def refusing_storage() -> AsyncIterator[int]:
    name = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name
    server, port = create_server(
        "127.0.0.1:0",
        # (Only UploadFile is served: the other methods answer UNIMPLEMENTED.)
        [ServiceSpec(name, RefusingUploads(), storage_pb2_grpc.add_StorageServiceServicer_to_server)],  # type: ignore[abstract]
    )
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0.5)


async def test_a_write_failing_as_the_server_ends_the_call_keeps_the_servers_status() -> None:
    # grpc.aio's race (grpc/grpc#36066), made certain: a write fails just after the server's status
    # arrived (what grpc.aio does then is done here by hand), and grpc.aio records its made-up
    # INTERNAL over that status. The client writes nothing itself once the server has ended the call.
    async with refusing_storage() as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        finish_writing = asyncio.Event()

        async def one_chunk_then_wait() -> AsyncIterator[storage_pb2.UploadFileRequest]:
            yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name="a.exe"))
            yield storage_pb2.UploadFileRequest(chunk=b"x" * 65536)
            await finish_writing.wait()

        def late_write_failure(call: grpc.aio.Call) -> None:
            # As grpc.aio handles a failed write just after the server's status (once: the
            # overwrite calls the done callbacks again).
            if not getattr(call, "overwritten", False):
                call.overwritten = True  # type: ignore[attr-defined]
                call._cython_call.set_internal_error("Failed execute_batch")  # type: ignore[attr-defined]

        # A plain channel mints no caller assertion: the call carries one made here.
        signed = assertion_metadata(service_subject("test"), "storage")
        plain = stub.UploadFile(one_chunk_then_wait(), metadata=signed)
        plain.add_done_callback(late_write_failure)
        with pytest.raises(grpc.aio.AioRpcError) as overwritten:
            await plain
        assert overwritten.value.code() == grpc.StatusCode.INTERNAL  # what the caller saw before

        call = stub.UploadFile(one_chunk_then_wait(), metadata=signed)
        kept_status = asyncio.ensure_future(stream_unary_response(call))
        await asyncio.sleep(0)  # the helper is watching the call before the overwrite is arranged
        call.add_done_callback(late_write_failure)
        with pytest.raises(grpc.aio.AioRpcError) as kept:
            await kept_status
        assert kept.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert kept.value.details() == "unsupported file type"
        finish_writing.set()


async def test_stream_unary_response_through_the_mesh_channel() -> None:
    async with refusing_storage() as port, create_channel(f"127.0.0.1:{port}") as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream_unary_response(stub.UploadFile(many_chunks()))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A genuine failure of the call (here: nothing listens on port 1) is raised as it is.
    async with create_channel("127.0.0.1:1") as nowhere:
        with pytest.raises(grpc.aio.AioRpcError) as unreachable:
            await stream_unary_response(storage_pb2_grpc.StorageServiceStub(nowhere).UploadFile(many_chunks()))
        assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE
