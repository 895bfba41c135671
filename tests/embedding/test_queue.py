"""The batcher's queue over gRPC: callers who leave are dropped, a full queue refuses at once.

The real model runs behind a gate the test opens, so "while the model is busy" is certain
rather than a matter of timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from embedding.batcher import Batcher
from embedding.model import SentenceEncoder
from embedding.server import SERVICE_NAME
from embedding.servicer import EmbeddingServicer
from studyassist.core.cache import LruTtlCache, TwoLayerCache
from studyassist.core.channels import create_channel
from studyassist.core.server import Server, ServiceSpec, create_server
from studyassist.core.testing import serving
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc


class GatedModel:
    """The encoder's embed, held until the test releases it."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        self.encoder = encoder
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: list[list[int]]) -> npt.NDArray[np.float32]:
        self.entered.set()
        if not self.release.wait(30):
            raise TimeoutError("test never released the model")
        return self.encoder.embed(batch)


@asynccontextmanager
async def gated_service(
    encoder: SentenceEncoder, max_queue: int
) -> AsyncIterator[tuple[embedding_pb2_grpc.EmbeddingServiceAsyncStub, GatedModel]]:
    model = GatedModel(encoder)

    async def build() -> tuple[Server, int]:
        batcher = Batcher(model, max_batch_tokens=4096, max_wait_s=0.0, max_queue=max_queue)
        cache = TwoLayerCache("unused:", LruTtlCache(0, 1.0))
        servicer = EmbeddingServicer(encoder, batcher, cache, max_texts=16, max_text_bytes=4096)
        server, port = create_server(
            "127.0.0.1:0",
            [ServiceSpec(SERVICE_NAME, servicer, embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server)],
        )
        batcher.start()
        server.on_stop.append(batcher.stop)
        return server, port

    try:
        async with serving(build) as address, create_channel(address, default_timeout=120) as channel:
            yield embedding_pb2_grpc.EmbeddingServiceStub(channel), model
    finally:
        model.release.set()


async def stats_when(
    stub: embedding_pb2_grpc.EmbeddingServiceAsyncStub, ready: Callable[[embedding_pb2.StatsResponse], bool]
) -> embedding_pb2.StatsResponse:
    deadline = asyncio.get_running_loop().time() + 20.0
    while True:
        stats = await stub.Stats(embedding_pb2.StatsRequest())
        if ready(stats):
            return stats
        assert asyncio.get_running_loop().time() < deadline, f"stats never got there: {stats}"
        await asyncio.sleep(0.02)


def request(*texts: str) -> embedding_pb2.EmbedRequest:
    return embedding_pb2.EmbedRequest(texts=[t.encode() for t in texts])


async def test_cancelled_callers_texts_are_dropped_not_embedded(encoder: SentenceEncoder) -> None:
    async with gated_service(encoder, max_queue=64) as (stub, model):
        first = asyncio.ensure_future(stub.Embed(request("đang chạy")))
        assert await asyncio.to_thread(model.entered.wait, 20)
        leaving = stub.Embed(request("một", "hai", "ba"))
        await stats_when(stub, lambda s: s.queue_depth == 3)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        model.release.set()
        assert len((await first).embeddings) == 1
        stats = await stats_when(stub, lambda s: s.dropped_cancelled == 3)
        after = await stub.Embed(request("sau đó"))
        final = await stub.Stats(embedding_pb2.StatsRequest())
    assert stats.texts_embedded == 1 and stats.queue_depth == 0
    assert len(after.embeddings) == 1 and final.texts_embedded == 2


async def test_full_queue_answers_resource_exhausted_at_once(encoder: SentenceEncoder) -> None:
    async with gated_service(encoder, max_queue=3) as (stub, model):
        running = asyncio.ensure_future(stub.Embed(request("a")))
        assert await asyncio.to_thread(model.entered.wait, 20)
        waiting = asyncio.ensure_future(stub.Embed(request("b1", "b2")))
        await stats_when(stub, lambda s: s.queue_depth == 2)
        # The model is still held: this answer cannot have waited for it.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Embed(request("c1", "c2"), timeout=10)
        assert not model.release.is_set()
        model.release.set()
        done = await asyncio.gather(running, waiting)
        stats = await stub.Stats(embedding_pb2.StatsRequest())
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in (raised.value.details() or "")
    assert [len(r.embeddings) for r in done] == [1, 2]
    assert stats.rejected_overload == 1 and stats.texts_embedded == 3


def test_batch_token_budget_follows_the_device_unless_set() -> None:
    from embedding.config import Settings, batch_token_budget
    from studyassist.core.config import ConfigError

    unset = Settings.from_env({})
    assert unset.max_batch_tokens == 0
    assert batch_token_budget(unset.max_batch_tokens, "cpu") == 2048
    assert batch_token_budget(unset.max_batch_tokens, "cuda") == 16384
    assert (
        batch_token_budget(Settings.from_env({"EMBEDDING_MAX_BATCH_TOKENS": "2048"}).max_batch_tokens, "cuda") == 2048
    )
    with pytest.raises(ConfigError, match="EMBEDDING_MAX_BATCH_TOKENS"):
        Settings.from_env({"EMBEDDING_MAX_BATCH_TOKENS": "8"})


def queued_or_refused(stats: embedding_pb2.StatsResponse, *, refused: int) -> bool:
    """The two texts of the newest request are queued, or it was refused (one more refusal)."""
    return stats.queue_depth == 2 or stats.rejected_overload > refused


async def test_texts_of_callers_who_left_do_not_fill_the_queue(encoder: SentenceEncoder) -> None:
    async with gated_service(encoder, max_queue=3) as (stub, model):
        running = asyncio.ensure_future(stub.Embed(request("a")))
        assert await asyncio.to_thread(model.entered.wait, 20)
        leaving = stub.Embed(request("một", "hai", "ba"))
        await stats_when(stub, lambda s: s.queue_depth == 3)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        # The queue is at its limit with texts nobody waits for; a live caller still gets in
        # (once the cancellation has reached the server), while the model is still held.
        deadline = asyncio.get_running_loop().time() + 10.0
        for refused in range(1000):
            live = asyncio.ensure_future(stub.Embed(request("c1", "c2"), timeout=20))
            stats = await stats_when(stub, partial(queued_or_refused, refused=refused))
            if stats.queue_depth == 2:
                break
            with pytest.raises(grpc.aio.AioRpcError):
                await live
            assert asyncio.get_running_loop().time() < deadline, "the gone caller's texts kept the queue full"
            await asyncio.sleep(0.05)
        assert not model.release.is_set()
        model.release.set()
        done = await asyncio.gather(running, live)
        stats = await stub.Stats(embedding_pb2.StatsRequest())
    assert [len(r.embeddings) for r in done] == [1, 2]
    assert stats.dropped_cancelled == 3 and stats.texts_embedded == 3
