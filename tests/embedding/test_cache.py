"""The two-layer cache: local LRU, then a real Redis; Redis unreachable is a miss, not an error."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis.asyncio as aioredis
from embedding.model import SentenceEncoder
from studyassist.core.channels import create_channel
from studyassist.core.testing import TcpProxy, serving
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from tests.embedding.conftest import TEXTS, builder

SOME = TEXTS[:3]


async def embed_and_stats(address: str) -> tuple[np.ndarray, embedding_pb2.StatsResponse]:  # type: ignore[type-arg]
    async with create_channel(address, default_timeout=120) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response = await stub.Embed(embedding_pb2.EmbedRequest(texts=[t.encode() for t in SOME]))
        stats = await stub.Stats(embedding_pb2.StatsRequest())
    return np.array([e.values for e in response.embeddings], dtype=np.float32), stats


def layers(stats: embedding_pb2.StatsResponse) -> dict[str, tuple[int, int]]:
    return {c.layer: (c.hits, c.misses) for c in stats.cache}


async def test_second_server_reads_vectors_from_redis(
    encoder: SentenceEncoder, redis_url: str, key_prefix: str
) -> None:
    build = builder(encoder, redis_url=redis_url, cache_prefix=key_prefix)
    async with serving(build) as address:
        computed, first = await embed_and_stats(address)
        again, repeat = await embed_and_stats(address)
    # A fresh process-local cache: only Redis can answer now.
    async with serving(build) as address:
        shared, second = await embed_and_stats(address)
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{key_prefix}*")]
        sizes = {len(await client.get(k) or b"") for k in keys}
        await client.delete(*keys)
    finally:
        await client.aclose()
    assert first.texts_embedded == 3 and layers(first) == {"local": (0, 3), "redis": (0, 3)}
    assert repeat.texts_embedded == 3 and layers(repeat)["local"] == (3, 3)
    assert second.texts_embedded == 0 and second.batches == 0 and layers(second) == {"local": (0, 3), "redis": (3, 0)}
    assert len(keys) == 3 and sizes == {8 + 4 * 384}
    np.testing.assert_array_equal(computed, again)
    np.testing.assert_array_equal(computed, shared)


async def test_unreachable_redis_is_a_miss_and_service_answers(encoder: SentenceEncoder) -> None:
    async with serving(builder(encoder, redis_url="redis://127.0.0.1:1/0")) as address:
        computed, first = await embed_and_stats(address)
        again, second = await embed_and_stats(address)
    np.testing.assert_allclose(computed, encoder.encode(SOME), atol=1e-5)
    np.testing.assert_array_equal(computed, again)
    assert first.texts_embedded == 3 and second.texts_embedded == 3
    assert layers(second)["local"] == (3, 3) and layers(second)["redis"][0] == 0


async def test_redis_that_stops_mid_run_is_a_miss_and_is_used_again_when_back(
    encoder: SentenceEncoder, redis_url: str, key_prefix: str
) -> None:
    url = urlsplit(redis_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 6379)
    await proxy.start()
    proxied = urlunsplit(url._replace(netloc=f"127.0.0.1:{proxy.port}"))
    # No local layer: every lookup goes to Redis, so what Redis does is all that is measured.
    build = builder(encoder, redis_url=proxied, cache_prefix=key_prefix, cache_entries=0)
    try:
        async with serving(build) as address:
            computed, stored = await embed_and_stats(address)
            proxy.cut()
            during, outage = await embed_and_stats(address)
            proxy.restore()
            # After its back-off (5 s) the service tries Redis again and finds the stored vectors.
            deadline = asyncio.get_running_loop().time() + 20.0
            while True:
                after, back = await embed_and_stats(address)
                if layers(back)["redis"][0] > 0:
                    break
                assert asyncio.get_running_loop().time() < deadline, f"Redis never used again: {back}"
                await asyncio.sleep(0.5)
    finally:
        await proxy.close()
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{key_prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    assert layers(stored)["redis"] == (0, 3) and stored.texts_embedded == 3
    # Redis gone: no error reached the caller, the texts were embedded again, nothing hit.
    assert layers(outage)["redis"][0] == 0 and outage.texts_embedded == 6
    np.testing.assert_allclose(during, computed, atol=1e-6)
    assert layers(back)["redis"][0] == 3
    np.testing.assert_array_equal(after, computed)
