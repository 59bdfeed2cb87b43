"""Querybank normalisation: products that sit close to very many queries ("hubs") give up part of their score.

In a trained space a few products become hubs: they are among the nearest products of many queries that are not
theirs, and win them (Radovanović et al., JMLR 2010). CSLS (Conneau et al., ICLR 2018) and querybank normalisation
(Bogolin et al., CVPR 2022) correct for it with a bank of queries: a product's hubness ``r_p`` is the mean of its
``k`` highest cosines with the bank's queries, and a query scores ``2 s(q, p) - r_p - r_q``. ``r_q`` is the same
for every product of one query, so a search here ranks by ``s(q, p) - r_p / 2`` (the same order, on the cosine's
scale). The bank should be a sample of the queries the shop really gets (a query log; no labels needed): hubs are
a property of where queries fall, and training photos fall where the model was fitted.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.config import write_atomic
from vitrine.errors import StoreError, VitrineError

BANK_FILE = "querybank.npz"

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``(vectors, depth) -> (scores, keys)``, each ``(len(vectors), depth)``; key -1 where a row ran out."""


def checked_k(k: int) -> int:
    """``k`` if it can make a hubness (at least one bank query per product), else a one-line user error."""
    if k < 1:
        raise VitrineError(f"querybank k must be at least 1 (bank queries per product), got {k}")
    return k


@dataclass
class QueryBank:
    """Hubness ``r_p`` of every product a bank query reached, fitted once (``fit``) and applied to searches."""

    keys: np.ndarray
    """``(P,)`` sorted keys of the products indexed at the fit."""
    hubness: np.ndarray
    """``(P,)`` their ``r_p``: the mean of their ``k`` highest cosines with the bank's queries."""
    floor: float
    """What a cosine a bank query did not keep counts as: the lowest cosine any bank query kept within its top
    ``depth`` (a product no bank query reached has this hubness)."""
    newcomer: float
    """``r_p`` of a product added since the fit: the median product's (no evidence either way)."""
    k: int
    queries: int
    """Bank queries the hubness comes from."""
    embedder: dict[str, Any]
    """The embedder whose space the bank was measured in (``Embedder.describe()``)."""

    @classmethod
    def fit(cls, bank: np.ndarray, search: Search, products: np.ndarray, *, k: int, depth: int,
            embedder: dict[str, Any]) -> QueryBank:
        """For each of ``products`` (keys), its ``k`` highest cosines among the top ``depth`` results of every bank
        query, averaged; one found by fewer than ``k`` bank queries counts ``floor`` for each missing one. With
        ``depth`` at least the number of products this is exact; deeper lists are slower to fit and nearer exact."""
        k = checked_k(k)
        if len(bank) == 0:
            raise StoreError("the query bank is empty: give it queries to measure hubness with")
        scores, keys = search(np.asarray(bank, dtype=np.float32), depth)
        found = keys >= 0
        floor = float(scores[found].min()) if found.any() else 0.0
        flat_keys, flat_scores = keys[found], scores[found].astype(np.float64)
        order = np.lexsort((-flat_scores, flat_keys))  # by product, each product's cosines highest first
        flat_keys, flat_scores = flat_keys[order], flat_scores[order]
        reached, starts, counts = np.unique(flat_keys, return_index=True, return_counts=True)
        rank = np.arange(len(flat_keys)) - np.repeat(starts, counts)  # place within the product's own run
        top = rank < k
        products = np.union1d(np.asarray(products, dtype=np.int64), reached)
        sums, found_by = np.zeros(len(products)), np.zeros(len(products))
        np.add.at(sums, np.searchsorted(products, flat_keys[top]), flat_scores[top])
        found_by[np.searchsorted(products, reached)] = counts
        hubness = ((sums + floor * np.maximum(k - found_by, 0)) / k).astype(np.float32)
        newcomer = float(np.median(hubness)) if len(hubness) else floor  # an empty index: nothing to compare with
        return cls(products, hubness, floor, newcomer, k, len(bank), embedder)

    def hubness_of(self, keys: np.ndarray) -> np.ndarray:
        """``r_p`` for product ``keys`` (any shape); ``newcomer`` for products added since the fit."""
        keys = np.asarray(keys, dtype=np.int64)
        if not len(self.keys):
            return np.full(keys.shape, self.newcomer, dtype=np.float32)
        at = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.hubness[at], self.newcomer).astype(np.float32)

    def apply(self, scores: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``(scores, keys)`` rescored ``s - r_p / 2``, re-sorted, cut to ``k``; empty slots (key -1)
        stay last."""
        adjusted = np.where(keys >= 0, scores - 0.5 * self.hubness_of(keys), -np.inf).astype(np.float32)
        order = np.argsort(-adjusted, axis=1, kind="stable")[:, :k]
        adjusted, keys = np.take_along_axis(adjusted, order, 1), np.take_along_axis(keys, order, 1)
        return np.where(keys >= 0, adjusted, 0.0).astype(np.float32), keys

    def describe(self) -> dict[str, Any]:
        return {"queries": self.queries, "k": self.k, "products": int(len(self.keys)), "floor": round(self.floor, 4),
                "median": round(self.newcomer, 4),
                "hubness_max": round(float(self.hubness.max()), 4) if len(self.hubness) else None}

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, keys=self.keys, hubness=self.hubness, floor=self.floor, newcomer=self.newcomer, k=self.k,
                 queries=self.queries, embedder=json.dumps(self.embedder, sort_keys=True))
        write_atomic(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> QueryBank:
        try:
            with np.load(Path(path)) as data:
                return cls(data["keys"], data["hubness"], float(data["floor"]), float(data["newcomer"]), int(data["k"]),
                           int(data["queries"]), json.loads(str(data["embedder"])))
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(f"{path}: unreadable query bank ({exc}); fit it again with 'vitrine querybank'") from None
