"""The service as a real process (the fixture the storage and chat suites use)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from sentence_transformers import SentenceTransformer
from studyassist.core.channels import create_channel
from studyassist.core.testing import ServiceProcess
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from tests.embedding.conftest import TEXTS


async def test_process_serves_vectors_equal_to_sentence_transformers(
    embedding_service: ServiceProcess, reference_model: SentenceTransformer
) -> None:
    async with create_channel(embedding_service.address, default_timeout=120) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        response = await stub.Embed(embedding_pb2.EmbedRequest(texts=[t.encode() for t in TEXTS]), timeout=60)
        info = await stub.Info(embedding_pb2.InfoRequest(), timeout=10)
    got = np.array([e.values for e in response.embeddings], dtype=np.float32)
    expected = reference_model.encode(TEXTS, normalize_embeddings=True)
    assert got.shape == (len(TEXTS), 384)
    assert response.dimension == 384 and response.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * expected).sum(axis=1).min() >= 0.9999
    assert [e.truncated for e in response.embeddings] == [False] * (len(TEXTS) - 1) + [True]
    assert response.embeddings[-1].tokens == info.max_tokens == 256
    assert info.device == "cpu" and info.dtype == "fp32" and info.rss_bytes > info.parameter_bytes > 0
    assert info.runtime.startswith("onnxruntime ")


def test_missing_model_directory_is_one_line_and_exit_2(tmp_path: object) -> None:
    env = {
        **os.environ,
        "EMBEDDING_PORT": "0",
        "EMBEDDING_MODEL": "/nonexistent/model",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "none",
    }
    done = subprocess.run([sys.executable, "-m", "embedding"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("embedding:")]
    assert lines == ["embedding: cannot start: model directory /nonexistent/model does not exist or has no config.json"]
