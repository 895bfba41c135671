"""The CPU engine: the same model exported once to ONNX and run by ONNX Runtime.

Why: on the CPU, ONNX Runtime with its transformer fusions (one Attention kernel per layer,
fused GELU and layer norms) encodes all-MiniLM-L6-v2 about 1.8x faster than torch eager in fp32
with the same vectors (cosine 0.9999999), and its int8 MatMuls about 2.8x, while one short text
takes ~3 ms instead of ~20 ms. The serving process then never holds torch weights.

The export needs torch and transformers, so it runs in a child process (their memory leaves with
it), takes a few seconds and is cached on disk under a key of the model's files and the
exporter's versions, written atomically; a cached file that does not load is exported again.
Mean pooling and L2 normalisation are part of the graph, so a run returns the sentence vectors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

# Bump when the exported graph changes meaning (inputs, pooling, quantised nodes).
EXPORT_FORMAT = 1
ONNX_OPSET = 17


def runtime_version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "studyassist" / "onnx"


def _cache_key(model_dir: Path, quantize: bool) -> str:
    versions = "|".join(importlib.metadata.version(p) for p in ("torch", "transformers", "onnxruntime", "onnx"))
    digest = hashlib.sha256(f"{EXPORT_FORMAT}|{versions}|{quantize}".encode())
    for name in sorted(p.name for p in model_dir.iterdir() if p.is_file()):
        if name.endswith((".json", ".safetensors", ".bin", ".txt", ".model")):
            digest.update(name.encode())
            with open(model_dir / name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:20]


def _export(model_dir: Path, target: Path, *, quantize: bool, num_heads: int, hidden_size: int) -> None:
    """Export, fuse and (optionally) quantise into ``target`` (a new file in a scratch directory)."""
    import warnings

    import onnx
    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    # Eager attention exports as the MatMul/Softmax pattern ONNX Runtime fuses into one kernel;
    # SDPA's export does not fuse.
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager").eval()
    from embedding.model import takes_token_types

    token_types = takes_token_types(model)

    class Pooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            # A graph input the model does not use is left out of the graph; run() feeds only those present.
            extra = {"token_type_ids": token_type_ids} if token_types else {}
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    raw = target.with_suffix(".raw.onnx")
    sample = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer notes about shapes that are constant for this model
        torch.onnx.export(
            Pooled(model),
            (sample, sample, torch.zeros_like(sample)),
            str(raw),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "token_type_ids": axes,
                "sentence_embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    del model
    fused = optimize_model(str(raw), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    if not quantize:
        fused.save_model_to_file(str(target))
        return
    fused_path = target.with_suffix(".fused.onnx")
    fused.save_model_to_file(str(fused_path))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fused_path), load_external_data=False).graph
    # As on the torch int8 path: the feed-forward down-projections, whose post-GELU inputs carry
    # outliers, stay in fp32. Activations are quantised per batch, so a text's vector depends a
    # little on its batch: with all of them int8 a batch drifts to cosine 0.989 (one text at a
    # time 0.9905); kept in fp32, >= 0.99 either way, at about 75 % of the all-int8 speed.
    keep_fp32 = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul" and "/output/dense/" in node.name and "/attention/" not in node.name
    ]
    quantize_dynamic(
        str(fused_path),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        nodes_to_exclude=keep_fp32,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


EXPORT_TIMEOUT_S = 600


def _export_in_child(model_dir: Path, target: Path, *, quantize: bool, num_heads: int, hidden_size: int) -> None:
    args = [str(model_dir), str(target), "int8" if quantize else "fp32", str(num_heads), str(hidden_size)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "embedding.onnxengine", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=EXPORT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the ONNX export took longer than {EXPORT_TIMEOUT_S} s") from None
    if done.returncode != 0 or not target.is_file():
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"the ONNX export failed: {last}")


class OnnxEngine:
    """Sentence vectors from padded token ids, through an ONNX Runtime session."""

    def __init__(
        self,
        model_dir: Path,
        *,
        quantize: bool,
        threads: int,
        num_heads: int,
        hidden_size: int,
        cache_dir: Path | None = None,
    ) -> None:
        import onnxruntime

        cache_dir = cache_dir or default_cache_dir()
        name = f"{model_dir.resolve().name}-{_cache_key(model_dir, quantize)}-{'int8' if quantize else 'fp32'}.onnx"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle workers must not spin: the service shares its cores with the rest of the mesh.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.exported = False
        cached = cache_dir / name
        session = _load(onnxruntime, cached, options) if cached.is_file() else None
        if session is None:
            with tempfile.TemporaryDirectory(prefix="studyassist-onnx-") as scratch:
                fresh = Path(scratch) / name
                _export_in_child(model_dir, fresh, quantize=quantize, num_heads=num_heads, hidden_size=hidden_size)
                self.exported = True
                # The session reads the whole file now, so the scratch copy may go afterwards.
                session = _load(onnxruntime, _keep(fresh, cached), options)
                if session is None:
                    raise RuntimeError(f"ONNX Runtime cannot load the model it just exported from {model_dir}")
                self.weight_bytes = fresh.stat().st_size
        else:
            self.weight_bytes = cached.stat().st_size
        self.path = cached
        self._session = session
        self._input_names = {i.name for i in session.get_inputs()}

    def run(self, input_ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        outputs = self._session.run(None, {k: v for k, v in feeds.items() if k in self._input_names})
        vectors: npt.NDArray[np.float32] = np.asarray(outputs[0], dtype=np.float32)
        return vectors


def _load(onnxruntime: Any, path: Path, options: Any) -> Any:
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a truncated or foreign cached file: the caller exports again
        log.warning("ONNX model %s does not load (%s)", path, exc)
        return None


def _keep(fresh: Path, cached: Path) -> Path:
    """Copy the export into the cache atomically and return the path to load. Where the cache is
    not writable (a read-only root filesystem and no cache volume) the scratch copy is loaded, and
    the next start exports again."""
    partial: Path | None = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cached.parent, prefix=".partial-", delete=False) as handle:
            partial = Path(handle.name)
            with open(fresh, "rb") as source:
                while block := source.read(1 << 20):
                    handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
        # Readable by the service's own user where an image builds the cache as root.
        partial.chmod(0o644)
        os.replace(partial, cached)
        return cached
    except OSError as exc:
        log.warning("cannot cache the ONNX model in %s (%s); the next start exports it again", cached.parent, exc)
        if partial is not None:
            partial.unlink(missing_ok=True)
        return fresh


if __name__ == "__main__":
    # The child process of _export_in_child: model_dir target fp32|int8 num_heads hidden_size.
    logging.basicConfig(level=logging.WARNING)
    source, destination, kind, heads, hidden = sys.argv[1:6]
    _export(Path(source), Path(destination), quantize=kind == "int8", num_heads=int(heads), hidden_size=int(hidden))
