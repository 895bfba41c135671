"""Client of the embedding service, as ingestion uses it: model facts once, vectors in batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from studyassist.core.channels import create_channel, user_metadata
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

SERVICE = "studyassist.embedding.v1.EmbeddingService"


class EmbeddingError(Exception):
    """The embedding service answered, but not with what was asked for."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    dimension: int
    max_tokens: int


class EmbeddingClient:
    def __init__(self, address: str, *, timeout_s: float = 60.0) -> None:
        self.channel = create_channel(
            address, default_timeout=timeout_s, idempotent=[(SERVICE, "Embed"), (SERVICE, "Info")]
        )
        self.stub = embedding_pb2_grpc.EmbeddingServiceStub(self.channel)
        self._info: ModelInfo | None = None

    async def info(self) -> ModelInfo:
        if self._info is None:
            reply = await self.stub.Info(embedding_pb2.InfoRequest(), timeout=10)
            self._info = ModelInfo(reply.model_id, reply.dimension, reply.max_tokens)
        return self._info

    async def embed(
        self, texts: list[str], *, deadline_s: float | None = None, user_id: str | None = None
    ) -> tuple[np.ndarray, str]:
        """A (len(texts), dimension) float32 array and the model id that produced it.

        ``deadline_s`` bounds this call (the channel's default otherwise). ``user_id``: the user the
        call acts for (a search); without one it acts for storage itself (ingestion).
        """
        reply = await self.stub.Embed(
            embedding_pb2.EmbedRequest(texts=[t.encode("utf-8") for t in texts]),
            timeout=deadline_s,
            metadata=user_metadata(user_id) if user_id else None,
        )
        if len(reply.embeddings) != len(texts):
            raise EmbeddingError(f"asked for {len(texts)} embeddings, got {len(reply.embeddings)}")
        vectors = np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)
        return vectors, reply.model_id

    async def close(self) -> None:
        await self.channel.close(None)
