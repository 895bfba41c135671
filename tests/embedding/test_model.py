"""Model paths beyond CPU fp32: the int8 path's accuracy, device choice, settings, metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from embedding.config import Settings
from embedding.model import SentenceEncoder, packaged_model_dir, resolve_device, resolve_runtime
from embedding.server import assemble
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from studyassist.core.bootstrap import StartupError
from studyassist.core.channels import create_channel
from studyassist.core.config import ConfigError
from studyassist.core.server import Server
from studyassist.core.telemetry import setup_telemetry
from studyassist.core.testing import serving
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from tests.embedding.conftest import TEXTS, settings

CORPUS = [
    "Giao thức TCP đảm bảo truyền dữ liệu tin cậy, có thứ tự và kiểm soát tắc nghẽn.",
    "Thuật toán Dijkstra tìm đường đi ngắn nhất từ một đỉnh nguồn trong đồ thị trọng số không âm.",
    "Khóa chính trong cơ sở dữ liệu quan hệ xác định duy nhất mỗi bản ghi của bảng.",
    "A hash table maps keys to values using a hash function and handles collisions by chaining.",
    "Paging divides virtual memory into fixed-size pages mapped to physical frames by the page table.",
    "Public-key cryptography uses a key pair: the public key encrypts and the private key decrypts.",
]
QUERIES = [
    "TCP reliable ordered delivery",
    "đường đi ngắn nhất trong đồ thị",
    "khóa chính là gì",
    "how does a hash table resolve collisions",
    "virtual memory pages and frames",
    "mã hóa khóa công khai",
]


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_int8_stays_close_to_fp32_and_keeps_the_ranking(encoder: SentenceEncoder, runtime: str) -> None:
    int8 = SentenceEncoder(device="cpu", dtype="int8", runtime=runtime)
    assert int8.runtime == runtime
    # Sentence-length texts, as retrieval sends them (1-3 token texts drift further, to ~0.97).
    texts = [t for t in TEXTS if len(t) > 30] + CORPUS + QUERIES
    cosine = (encoder.encode(texts) * int8.encode(texts)).sum(axis=1)
    assert cosine.min() >= 0.99, cosine
    ranking_fp32 = np.argsort(-encoder.encode(QUERIES) @ encoder.encode(CORPUS).T, axis=1)
    ranking_int8 = np.argsort(-int8.encode(QUERIES) @ int8.encode(CORPUS).T, axis=1)
    assert (ranking_fp32[:, 0] == ranking_int8[:, 0]).all()
    assert int8.dtype == "int8" and int8.device == "cpu"


def test_both_runtimes_give_the_same_vectors(encoder: SentenceEncoder) -> None:
    assert encoder.runtime == "onnx" and encoder.runtime_version.startswith("onnxruntime ")
    torch_encoder = SentenceEncoder(device="cpu", dtype="fp32", runtime="torch")
    assert torch_encoder.runtime_version.startswith("torch ")
    # Mixed lengths, so padding and the attention mask matter; one text beyond the model's limit.
    texts = [*TEXTS, *CORPUS, "cấu trúc dữ liệu " * 300]
    cosine = (encoder.encode(texts) * torch_encoder.encode(texts)).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine


def test_onnx_export_is_cached_and_a_broken_cache_is_exported_again(tmp_path: Path) -> None:
    first = SentenceEncoder(device="cpu", dtype="fp32", onnx_cache_dir=tmp_path)
    assert first._onnx is not None and first._onnx.exported
    [cached] = tmp_path.glob("*-fp32.onnx")
    again = SentenceEncoder(device="cpu", dtype="fp32", onnx_cache_dir=tmp_path)
    assert again._onnx is not None and not again._onnx.exported
    cached.write_bytes(cached.read_bytes()[:1000])  # a cut-off file, as a full disk leaves it
    repaired = SentenceEncoder(device="cpu", dtype="fp32", onnx_cache_dir=tmp_path)
    assert repaired._onnx is not None and repaired._onnx.exported
    assert cached.stat().st_size > 1_000_000
    np.testing.assert_allclose(repaired.encode(TEXTS), first.encode(TEXTS), atol=1e-6)


def test_unwritable_onnx_cache_still_serves(tmp_path: Path) -> None:
    blocked = tmp_path / "file-in-the-way"
    blocked.write_text("not a directory")
    encoder = SentenceEncoder(device="cpu", dtype="fp32", onnx_cache_dir=blocked / "onnx")
    assert encoder.encode(["xin chào"]).shape == (1, 384)


def test_the_onnx_runtime_process_does_not_load_torch(tmp_path: Path) -> None:
    """The CPU service's memory: torch (hundreds of MB) stays out of the serving process."""
    probe = (
        "import sys; from pathlib import Path; from embedding.model import SentenceEncoder; "
        f"e = SentenceEncoder(device='cpu', dtype='fp32', onnx_cache_dir=Path({str(tmp_path)!r})); "
        "e.encode(['xin chào']); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_runtime_choice() -> None:
    assert resolve_runtime("auto", "cpu", "fp32") == "onnx"
    assert resolve_runtime("auto", "cpu", "int8") == "onnx"
    assert resolve_runtime("auto", "cpu", "bf16") == "torch"
    assert resolve_runtime("auto", "cuda", "fp16") == "torch"
    with pytest.raises(StartupError, match="CPU only"):
        resolve_runtime("onnx", "cuda", "fp16")
    with pytest.raises(StartupError, match="fp32 or int8"):
        resolve_runtime("onnx", "cpu", "bf16")
    with pytest.raises(ConfigError, match="EMBEDDING_RUNTIME"):
        Settings.from_env({"EMBEDDING_RUNTIME": "tensorrt"})


def test_device_and_dtype_choice() -> None:
    assert resolve_device("cpu", "auto") == ("cpu", "fp32")
    assert resolve_device("auto", "int8") == ("cpu", "int8")
    with pytest.raises(StartupError, match="fp16 needs CUDA"):
        resolve_device("cpu", "fp16")
    if torch.cuda.is_available():
        assert resolve_device("auto", "auto") == ("cuda", "fp16")
        with pytest.raises(StartupError, match="CPU only"):
            resolve_device("cuda", "int8")
    else:
        assert resolve_device("auto", "auto") == ("cpu", "fp32")
        with pytest.raises(StartupError, match="no CUDA device"):
            resolve_device("cuda", "auto")


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="EMBEDDING_DTYPE"):
        Settings.from_env({"EMBEDDING_DTYPE": "int4"})
    with pytest.raises(ConfigError, match="EMBEDDING_MAX_QUEUE"):
        Settings.from_env({"EMBEDDING_MAX_QUEUE": "0"})
    defaults = Settings.from_env({})
    assert (defaults.port, defaults.device, defaults.dtype, defaults.max_texts) == (50053, "auto", "auto", 256)


def test_missing_model_directory_is_a_startup_error(tmp_path: object) -> None:
    with pytest.raises(StartupError, match=r"no config\.json"):
        SentenceEncoder(str(tmp_path), device="cpu")


async def test_metrics_report_batches_queue_and_cache(encoder: SentenceEncoder) -> None:
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("embedding-test", None, extra_readers=[reader])

    async def build() -> tuple[Server, int]:
        return assemble(encoder, settings(), redis_url="", meter=telemetry.meter, tracer=telemetry.tracer)

    try:
        async with serving(build) as address, create_channel(address, default_timeout=120) as channel:
            stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
            request = embedding_pb2.EmbedRequest(texts=[b"mot", b"hai", b"ba"])
            await stub.Embed(request)
            await stub.Embed(request)
            data = reader.get_metrics_data()
    finally:
        telemetry.shutdown()
    assert data is not None
    points = {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert sum(p.sum for p in points["embedding.batch.size"]) == 3  # type: ignore[attr-defined]
    assert [p.value for p in points["embedding.queue.depth"]] == [0]  # type: ignore[attr-defined]
    assert {p.attributes["layer"]: p.value for p in points["embedding.cache.hits"]} == {"local": 3}  # type: ignore[attr-defined,index]
    assert {p.attributes["layer"]: p.value for p in points["embedding.cache.misses"]} == {"local": 3}  # type: ignore[attr-defined,index]
    assert [p.value for p in points["embedding.texts"]] == [3]  # type: ignore[attr-defined]


def test_another_local_model_directory_is_served_as_it_is(tmp_path: Path) -> None:
    """EMBEDDING_MODEL names any local directory: here a small random BERT with its own size."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = tmp_path / "tiny-bert-vi"
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_dir()), local_files_only=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(3)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)

    encoder = SentenceEncoder(str(directory), device="cpu", dtype="fp32")
    vectors = encoder.encode(TEXTS)
    reference = SentenceTransformer(str(directory), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert (encoder.model_id, encoder.dimension, encoder.max_tokens) == ("tiny-bert-vi", 48, 64)
    assert vectors.shape == (len(TEXTS), 48)
    cosines = (vectors * reference).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_a_model_without_token_types_is_served_by_both_runtimes(tmp_path: Path, runtime: str) -> None:
    """DistilBERT's forward takes no token_type_ids: neither runtime may pass them."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    directory = tmp_path / "tiny-distilbert"
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_dir()), local_files_only=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(5)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
    )
    DistilBertModel(config).save_pretrained(directory)

    encoder = SentenceEncoder(str(directory), device="cpu", dtype="fp32", runtime=runtime, onnx_cache_dir=tmp_path)
    reference = SentenceTransformer(str(directory), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert encoder.dimension == 32
    cosines = (encoder.encode(TEXTS) * reference).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
