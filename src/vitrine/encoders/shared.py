"""One backbone's frozen blocks run once for two consumers.

A model that fine-tuned the top ``N`` blocks of an image backbone (``name@SIZE/topN``) reads the maps
entering those blocks; the same backbone's zero-shot features (``name@SIZE``) are those maps carried
through the *pretrained* top blocks. Served side by side (``embedding.zero_shot_weight``), the two would
run the frozen blocks, most of the network, twice per photo. ``StackedImageEncoder`` computes the
zero-shot features as ``pretrained top(bottom maps)`` and ``LastBatchMemo`` lets the second consumer of a
photo's maps take them from the first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from vitrine.catalog.images import ImageInput
from vitrine.encoders.base import ImageEncoder, l2_normalize


class LastBatchMemo(ImageEncoder):
    """``encoder`` that remembers its last call per thread: called again with the same image objects
    (an ensemble's members encoding one query's photo), it returns the same features without running.
    Only small calls (queries) are kept, and the images are held so their ids cannot be reused."""

    def __init__(self, encoder: ImageEncoder, max_images: int = 64) -> None:
        self.encoder, self.max_images = encoder, max_images
        self.name, self.dim, self.normalized = encoder.name, encoder.dim, encoder.normalized
        self._last = threading.local()

    def encode(self, images: Sequence[ImageInput], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        key = tuple(map(id, images))
        last = getattr(self._last, "entry", None)
        if last is not None and last[0] == key:
            return last[2].copy()
        features = self.encoder.encode(images, batch_size=batch_size, progress=progress)
        self._last.entry = (key, list(images), features.copy()) if 0 < len(images) <= self.max_images else None
        return features

    def __getattr__(self, name: str):  # the wrapped encoder's extras (top(), map_shape, ...)
        if name in ("encoder", "_last"):
            raise AttributeError(name)
        return getattr(self.encoder, name)


class StackedImageEncoder(ImageEncoder):
    """Unit-length ``top(bottom.encode(images))``: a backbone's pooled features from the maps of its split
    ``bottom`` and a frozen ``top`` (a ``torch.nn.Module``, maps in, pooled features out), served in ONNX
    Runtime with ``runtime="onnx"``."""

    def __init__(self, bottom: ImageEncoder, top: torch.nn.Module, name: str, *, runtime: str = "torch",
                 threads: int = 0) -> None:
        self.bottom, self.name = bottom, name
        self.dim = int(top.out_dim)
        if runtime == "onnx":
            from vitrine.encoders.onnx_runtime import ServedModule

            top = ServedModule(top, "maps", f"{name}-top-of-{bottom.name}", threads)
        self.top = top.eval()

    def encode(self, images: Sequence[ImageInput], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        maps = self.bottom.encode(images, batch_size=batch_size, progress=progress)
        with torch.inference_mode():
            pooled = [self.top(torch.from_numpy(maps[start:start + batch_size])).numpy()
                      for start in range(0, len(maps), batch_size)]
        return l2_normalize(np.concatenate(pooled)) if pooled else np.zeros((0, self.dim), dtype=np.float32)
