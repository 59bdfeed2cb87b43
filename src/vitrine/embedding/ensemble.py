"""Several embedders served as one: their vectors side by side, each block scaled by the root of its weight.

    vector = [ sqrt(w_1) * e_1(x),  sqrt(w_2) * e_2(x), ... ]      (weights sum to 1)

so the inner product of a query and a product is ``sum_i w_i * <e_i(q), e_i(p)>``: an output-space
ensemble, searchable by any index. Its use here is the trained towers beside the frozen backbones'
zero-shot vectors (``embedding.zero_shot_weight``): fine-tuning on a few thousand photos sharpens the
products it saw and forgets some of what ImageNet and MiniLM knew about the rest, and the weighted sum
keeps both (the output-space counterpart of WiSE-FT's weight-space ensemble, Wortsman et al., 2022).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vitrine.catalog.product import Product
from vitrine.embedding.base import Embedder, Query
from vitrine.encoders.base import l2_normalize
from vitrine.errors import VitrineError


class EnsembleEmbedder(Embedder):
    """``members`` are ``(embedder, weight)``; weights must be positive and sum to 1."""

    kind = "ensemble"

    def __init__(self, members: Sequence[tuple[Embedder, float]]) -> None:
        weights = np.array([weight for _, weight in members], dtype=np.float64)
        if len(members) < 2 or (weights <= 0).any() or not np.isclose(weights.sum(), 1.0):
            raise VitrineError(f"an ensemble needs two or more embedders with positive weights summing to 1, "
                               f"got weights {weights.tolist()}")
        self.members = [embedder for embedder, _ in members]
        self.weights = weights.tolist()
        self.scales = np.sqrt(weights).astype(np.float32)
        self.dim = sum(embedder.dim for embedder in self.members)

    def encode_products(self, products: Sequence[Product], *, progress: bool = False) -> np.ndarray:
        return self._joined([member.encode_products(products, progress=progress) for member in self.members])

    def encode_queries(self, queries: Sequence[Query], *, progress: bool = False) -> np.ndarray:
        return self._joined([member.encode_queries(queries, progress=progress) for member in self.members])

    def encode_product_parts(self, products: Sequence[Product], *, progress: bool = False) -> dict[str, np.ndarray]:
        parts = [member.encode_product_parts(products, progress=progress) for member in self.members]
        fused = self._joined([part["fused"] for part in parts])
        joined = {"fused": fused}
        for name in ("text", "image"):  # a member without a modality's own vectors lends its fused block
            blocks = [part.get(name, part["fused"]) for part in parts]
            joined[name] = l2_normalize(self._joined(blocks))
        return joined

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim,
                "members": [{**member.describe(), "weight": weight}
                            for member, weight in zip(self.members, self.weights)]}

    def _joined(self, blocks: list[np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(np.hstack([block * scale for block, scale in zip(blocks, self.scales)]),
                                    dtype=np.float32)
