"""Client channels (studyassist.core.channels) against real servers on port 0: idempotent methods
are retried on UNAVAILABLE by the channel's retry policy (and only those), every call gets the
default deadline, and one channel spreads calls round robin over every address it resolves."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import grpc
import pytest
from studyassist.core.channels import create_channel
from studyassist.core.errors import Unavailable
from studyassist.core.testing import StandInServicer, stand_in_server
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

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
