"""Embedding products away from this process (Ray workers), with the store's own embedder.

The factory carries only the store path and settings; each Ray actor builds the embedder once, so
model weights are loaded per worker instead of being pickled with every batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.catalog import Product
from vitrine.config import Config


@dataclass(frozen=True)
class StoreEmbedderFactory:
    """``factory()`` → a batch function ``products → list of vectors``, for ``vitrine.parallel.map_batches``."""

    models_dir: Path
    config: Config
    recorded: dict[str, Any] | None

    def __call__(self) -> Callable[[Sequence[Product]], list[np.ndarray]]:
        from vitrine.engine.factory import build_embedder

        embedder = build_embedder(self.config, self.models_dir, self.recorded, cache=None)

        def embed(products: Sequence[Product]) -> list[np.ndarray]:
            return list(embedder.encode_products(list(products)))

        return embed
