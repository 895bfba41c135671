"""Embed over gRPC on an in-process server: equality, batching, truncation, bad input."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from embedding.batcher import cut_by_padded_tokens
from embedding.model import SentenceEncoder
from sentence_transformers import SentenceTransformer
from studyassist.core.channels import create_channel
from studyassist.core.testing import serving
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from tests.embedding.conftest import TEXTS, builder


def vectors(response: embedding_pb2.EmbedResponse) -> np.ndarray:  # type: ignore[type-arg]
    return np.array([e.values for e in response.embeddings], dtype=np.float32)


async def test_vectors_match_sentence_transformers_one_by_one_and_batched(
    encoder: SentenceEncoder, reference_model: SentenceTransformer
) -> None:
    expected = reference_model.encode(TEXTS, normalize_embeddings=True)
    # A long wait makes the concurrent callers below share forward passes.
    build = builder(encoder, max_wait_ms=50.0, cache_entries=0)
    async with serving(build) as address, create_channel(address, default_timeout=120) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        one_by_one = [vectors(await stub.Embed(embedding_pb2.EmbedRequest(texts=[t.encode()]))) for t in TEXTS]
        before = await stub.Stats(embedding_pb2.StatsRequest())
        concurrent = await asyncio.gather(*(stub.Embed(embedding_pb2.EmbedRequest(texts=[t.encode()])) for t in TEXTS))
        after = await stub.Stats(embedding_pb2.StatsRequest())
    alone = np.concatenate(one_by_one)
    together = np.concatenate([vectors(r) for r in concurrent])
    assert (alone * expected).sum(axis=1).min() >= 0.9999
    assert (together * alone).sum(axis=1).min() >= 0.9999
    assert before.batches == len(TEXTS)
    # The concurrent callers were merged: fewer forward passes than callers.
    assert after.texts_embedded - before.texts_embedded == len(TEXTS)
    assert after.batches - before.batches < len(TEXTS)


async def test_truncation_is_flagged_per_text_and_duplicates_answer_in_order(encoder: SentenceEncoder) -> None:
    long = "Kiến trúc máy tính và hệ điều hành. " * 200
    texts = ["short text", long, "short text"]
    async with serving(builder(encoder)) as address, create_channel(address, default_timeout=120) as channel:
        response = await embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(
            embedding_pb2.EmbedRequest(texts=[t.encode() for t in texts])
        )
    flags = [(e.truncated, e.tokens) for e in response.embeddings]
    assert flags == [(False, 4), (True, 256), (False, 4)]
    got = vectors(response)
    np.testing.assert_allclose(got[0], got[2])
    np.testing.assert_allclose(got, encoder.encode(texts), atol=1e-5)


@pytest.mark.parametrize(
    ("texts", "reason"),
    [
        ([], "texts is empty"),
        ([b"x"] * 9, "9 texts in one request; at most 8"),
        ([b"ok", b"y" * 1025], "texts[1] is 1025 bytes; at most 1024"),
        ([b"ok", "Vi\u1ec7".encode()[:-1]], "texts[1] is not valid UTF-8"),
        ([b"\xff\xfe"], "texts[0] is not valid UTF-8 (bad byte at offset 0)"),
    ],
)
async def test_bad_input_is_invalid_argument_with_reason(
    encoder: SentenceEncoder, texts: list[bytes], reason: str
) -> None:
    build = builder(encoder, max_texts=8, max_text_bytes=1024)
    async with serving(build) as address, create_channel(address, default_timeout=120) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Embed(embedding_pb2.EmbedRequest(texts=texts))
        # The service still answers afterwards.
        ok = await stub.Embed(embedding_pb2.EmbedRequest(texts=[b"y" * 1024]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (raised.value.details() or "")
    assert len(ok.embeddings) == 1


def test_batches_are_cut_by_padded_tokens_shortest_first() -> None:
    lengths = [100, 5, 7, 100, 6, 60]
    batches = cut_by_padded_tokens(lengths, budget=200)
    assert [i for b in batches for i in b] == [1, 4, 2, 5, 0, 3]
    assert all(len(b) * max(lengths[i] for i in b) <= 200 for b in batches)
    # A text longer than the budget still gets a pass of its own.
    assert cut_by_padded_tokens([300, 2], budget=100) == [[1], [0]]
