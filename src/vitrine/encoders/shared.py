"""One backbone's frozen part run once for two consumers.

A model that fine-tuned the top of a backbone (``efficientnet-lite0@288/top5``, ``minilm/top1``) reads what
enters those blocks or layers; the same backbone's zero-shot features (``efficientnet-lite0@288``,
``minilm``) are that input carried through the *pretrained* top. Served side by side
(``embedding.zero_shot_weight``), the two would run the frozen part, most of the network, twice per query.
``StackedEncoder`` computes the zero-shot features as ``pretrained top(bottom output)`` and ``LastCallMemo``
lets the second consumer of a query's bottom output take it from the first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vitrine.encoders.base import ImageEncoder, TextEncoder, l2_normalize


class LastCallMemo(ImageEncoder, TextEncoder):
    """An encoder (of photos or texts) that remembers its last call per thread: called again with the same
    objects (an ensemble's members encoding one query), it returns the same features without running.
    Only small calls (queries) are kept, and the inputs are held so their ids cannot be reused."""

    def __init__(self, encoder: ImageEncoder | TextEncoder, max_items: int = 64) -> None:
        self.encoder, self.max_items = encoder, max_items
        self.name, self.dim, self.normalized = encoder.name, encoder.dim, encoder.normalized
        self._last = threading.local()

    def encode(self, items: Sequence[Any], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        key = tuple(map(id, items))
        last = getattr(self._last, "entry", None)
        if last is not None and last[0] == key:
            return last[2].copy()
        features = self.encoder.encode(items, batch_size=batch_size, progress=progress)
        self._last.entry = (key, list(items), features.copy()) if 0 < len(items) <= self.max_items else None
        return features

    def __getattr__(self, name: str):  # the wrapped encoder's extras (top(), map_shape, ...)
        if name in ("encoder", "_last"):
            raise AttributeError(name)
        return getattr(self.encoder, name)


class StackedEncoder(ImageEncoder, TextEncoder):
    """Unit-length ``top(bottom.encode(items))``: a backbone's features from the output of its split
    ``bottom`` and a frozen ``top`` (a ``torch.nn.Module`` with ``out_dim``), the top served in ONNX
    Runtime with ``runtime="onnx"``."""

    def __init__(self, bottom: ImageEncoder | TextEncoder, top: torch.nn.Module, name: str, *,
                 runtime: str = "torch", threads: int = 0) -> None:
        self.bottom, self.name = bottom, name
        self.dim = int(top.out_dim)
        if runtime == "onnx":
            from vitrine.encoders.onnx_runtime import ServedModule

            top = ServedModule(top, "maps", f"{name}-top-of-{bottom.name}", threads)
        self.top = top.eval()

    def encode(self, items: Sequence[Any], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        inputs = self.bottom.encode(items, batch_size=batch_size, progress=progress)
        with torch.inference_mode():
            outputs = [self.top(torch.from_numpy(inputs[start:start + batch_size])).numpy()
                       for start in range(0, len(inputs), batch_size)]
        return l2_normalize(np.concatenate(outputs)) if outputs else np.zeros((0, self.dim), dtype=np.float32)
