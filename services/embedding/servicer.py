"""The EmbeddingService RPCs: validate, look in the cache, batch what is missing, answer."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct

import grpc
import numpy as np
import psutil
from opentelemetry import metrics
from studyassist.core.cache import TwoLayerCache
from studyassist.core.errors import InvalidArgument
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from embedding.batcher import Batcher
from embedding.model import SentenceEncoder

# A cached value: tokens used and the truncation flag, then the float32 vector (little-endian).
_CACHE_HEADER = struct.Struct("<ii")


def cache_key(model_key: str, text: str) -> str:
    return hashlib.sha256(f"{model_key}\x00{text}".encode()).hexdigest()


def pack_cached(tokens: int, truncated: bool, vector: np.ndarray) -> bytes:  # type: ignore[type-arg]
    return _CACHE_HEADER.pack(tokens, int(truncated)) + vector.astype("<f4", copy=False).tobytes()


def unpack_cached(value: bytes, dimension: int) -> embedding_pb2.Embedding | None:
    if len(value) != _CACHE_HEADER.size + 4 * dimension:
        return None  # written by another model or format: a miss, recomputed and overwritten
    tokens, truncated = _CACHE_HEADER.unpack_from(value)
    values = np.frombuffer(value, dtype="<f4", offset=_CACHE_HEADER.size)
    return embedding_pb2.Embedding(values=values.tolist(), tokens=tokens, truncated=bool(truncated))


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(
        self,
        encoder: SentenceEncoder,
        batcher: Batcher,
        cache: TwoLayerCache,
        *,
        max_texts: int,
        max_text_bytes: int,
        meter: metrics.Meter | None = None,
    ) -> None:
        self._encoder = encoder
        self._batcher = batcher
        self._cache = cache
        self._max_texts = max_texts
        self._max_text_bytes = max_text_bytes
        # int8 vectors differ slightly from fp32 ones: never mix them in a shared Redis.
        # Each runtime quantises in its own way, so int8 keys name the runtime too.
        self._model_key = f"{encoder.model_id}|{'int8-' + encoder.runtime if encoder.dtype == 'int8' else 'float'}"
        self._process = psutil.Process(os.getpid())
        cache.export_counters(meter or metrics.NoOpMeter("embedding.cache"), "embedding.cache")

    def _validate(self, request: embedding_pb2.EmbedRequest) -> list[str]:
        if not request.texts:
            raise InvalidArgument("texts is empty: send at least one text")
        if len(request.texts) > self._max_texts:
            raise InvalidArgument(f"{len(request.texts)} texts in one request; at most {self._max_texts} are allowed")
        texts = []
        for index, raw in enumerate(request.texts):
            if len(raw) > self._max_text_bytes:
                raise InvalidArgument(
                    f"texts[{index}] is {len(raw)} bytes; at most {self._max_text_bytes} bytes are allowed"
                )
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidArgument(f"texts[{index}] is not valid UTF-8 (bad byte at offset {exc.start})") from None
        return texts

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        texts = self._validate(request)
        unique = list(dict.fromkeys(texts))  # a text repeated in one request is embedded once
        keys = [cache_key(self._model_key, text) for text in unique]
        found: dict[str, embedding_pb2.Embedding] = {}
        for text, value in zip(unique, await self._cache.get_many(keys), strict=True):
            if value is not None and (embedding := unpack_cached(value, self._encoder.dimension)) is not None:
                found[text] = embedding
        missing = [(text, key) for text, key in zip(unique, keys, strict=True) if text not in found]
        if missing:
            missing_texts = [text for text, _ in missing]
            # Long requests are tokenised on a thread so they do not stall other callers.
            if sum(len(t) for t in missing_texts) > 16_384:
                tokens = await asyncio.to_thread(self._encoder.tokenize, missing_texts)
            else:
                tokens = self._encoder.tokenize(missing_texts)
            vectors = await self._batcher.embed([t.ids for t in tokens])
            fresh: dict[str, bytes] = {}
            for (text, key), tok, vector in zip(missing, tokens, vectors, strict=True):
                found[text] = embedding_pb2.Embedding(
                    values=vector.tolist(), tokens=len(tok.ids), truncated=tok.truncated
                )
                fresh[key] = pack_cached(len(tok.ids), tok.truncated, vector)
            await self._cache.set_many(fresh)
        return embedding_pb2.EmbedResponse(
            embeddings=[found[text] for text in texts],
            model_id=self._encoder.model_id,
            dimension=self._encoder.dimension,
        )

    async def Info(
        self, request: embedding_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.InfoResponse:
        encoder = self._encoder
        return embedding_pb2.InfoResponse(
            model_id=encoder.model_id,
            dimension=encoder.dimension,
            max_tokens=encoder.max_tokens,
            device=encoder.device,
            dtype=encoder.dtype,
            load_seconds=encoder.load_seconds,
            parameter_bytes=encoder.parameter_bytes,
            rss_bytes=self._process.memory_info().rss,
            runtime=encoder.runtime_version,
        )

    async def Stats(
        self, request: embedding_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.StatsResponse:
        stats = self._batcher.stats
        return embedding_pb2.StatsResponse(
            cache=[
                embedding_pb2.CacheLayerStats(layer=layer, hits=hits, misses=misses)
                for layer, hits, misses in self._cache.layers()
            ],
            batches=stats.batches,
            texts_embedded=stats.texts_embedded,
            mean_batch_size=stats.mean_batch_size,
            queue_depth=self._batcher.queue_depth,
            texts_per_second=stats.texts_per_second(),
            rejected_overload=stats.rejected_overload,
            dropped_cancelled=stats.dropped_cancelled,
        )
