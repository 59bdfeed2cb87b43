"""The two seams every backbone plugs into. Outputs are float32 and L2-normalised."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from vitrine.catalog.images import ImageInput


class TextEncoder(ABC):
    name: str
    dim: int
    normalized: bool = True
    """False for encoders that return token states for a trainable top (never normalised)."""

    @abstractmethod
    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """``(len(texts), dim)`` float32, rows of unit length."""


class ImageEncoder(ABC):
    name: str
    dim: int
    normalized: bool = True
    """False for encoders that return raw feature maps for a trainable top (never mean-normalised)."""

    @abstractmethod
    def encode(self, images: Sequence[ImageInput], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """``(len(images), dim)`` float32, rows of unit length."""


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
