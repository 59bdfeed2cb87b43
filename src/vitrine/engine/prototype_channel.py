"""ID recognition as a retrieval channel: query -> its nearest prototypes -> their products.

The prototype head dropped for embedding is kept here: a query vector is compared with every
prototype row, and the products of the best prototypes come first (each scored by its prototype's
cosine; members of one prototype ordered by their own cosine). Vector hits are merged in by score,
so a product without a prototype (added after training) can still be found when it is closer than
any prototype.

Several trained models served side by side (``embedding.also``) recognise IDs together when they were
trained on one prototype library: a prototype scores the weighted sum of each model's cosine to its
own row for that prototype, as their vectors' blocks are weighted in the served vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrine.embedding.prototypes import HEAD_FILE, PrototypeHead, PrototypeLibrary
from vitrine.errors import StoreError, UnknownProductError

CHANNELS = ("vector", "prototype")


@dataclass(frozen=True)
class TowerBlock:
    """Where one trained model's vectors sit in served vectors: columns ``start:stop``, scaled by ``scale``
    (the root of its weight in an ensemble)."""

    start: int
    stop: int
    scale: float = 1.0


class PrototypeChannel:
    """``heads`` pairs each trained model's prototype head with its block in served vectors (one block
    spanning every column when the towers are served alone); ``members`` are the product keys of each
    prototype, shared by all heads."""

    def __init__(self, heads: Sequence[tuple[PrototypeHead, TowerBlock]], members: list[np.ndarray]) -> None:
        if not heads:
            raise StoreError("the prototype channel needs at least one prototype head")
        if len({len(head) for head, _ in heads}) > 1:
            raise StoreError(f"the models' prototype heads differ in size ({[len(head) for head, _ in heads]} rows)")
        self.members = members
        # sum_i scale_i**2 * cos(q_i, row_i) is one inner product: the served query's tower columns with
        # every head's unit rows side by side, each scaled as its block is.
        self.columns = np.concatenate([np.arange(block.start, block.stop) for _, block in heads])
        self.matrix = np.hstack([block.scale * head.unit_rows() for head, block in heads]).astype(np.float32)

    @classmethod
    def load(cls, folders: Sequence[Path], blocks: Sequence[TowerBlock],
             key_of: Callable[[str], int]) -> "PrototypeChannel":
        """The heads of the models in ``folders`` (served in ``blocks``), which must share one prototype library."""
        if len(blocks) != len(folders):
            raise StoreError(f"{len(folders)} models are served but their vectors hold {len(blocks)} towers' blocks")
        libraries = []
        for folder in map(Path, folders):
            if not (folder / HEAD_FILE).is_file():
                raise StoreError(f"{folder}: no prototype head here; train with 'vitrine train --objective "
                                 f"prototype' (stage 2 or 3) to search with channel=prototype")
            libraries.append(PrototypeLibrary.load(folder))
        for folder, library in zip(folders[1:], libraries[1:]):
            if library.members() != libraries[0].members():
                raise StoreError(f"{folder} and {folders[0]} were trained on different prototype libraries; "
                                 f"ID recognition over several models needs one: search the vector channel")
        members = [np.array([k for k in (_key(key_of, pid) for pid in ids) if k >= 0], dtype=np.int64)
                   for ids in libraries[0].members()]
        return cls([(PrototypeHead.load(folder), block) for folder, block in zip(folders, blocks)], members)

    def top(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, prototype ids) of the ``k`` best prototypes per served query vector: the weighted sum of
        each head's cosine (``scale**2 * cos``, the weight its block carries in an inner product)."""
        scores = vectors[:, self.columns] @ self.matrix.T
        k = min(k, scores.shape[1])
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(best, np.argsort(-np.take_along_axis(scores, best, 1), axis=1, kind="stable"), 1)
        return np.take_along_axis(scores, best, 1).astype(np.float32), best

    def search(self, vectors: np.ndarray, k: int, vector_scores: np.ndarray, vector_keys: np.ndarray,
               vector_of: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, keys) of the ``k`` best products per query, padded with -1 keys.

        A product found through a prototype scores as if each model's block were that prototype's row:
        the prototype's weighted cosines plus the product's own score in the other blocks (an ensemble's
        zero-shot blocks), so prototype hits and vector hits share one scale.
        """
        proto_scores, proto_ids = self.top(vectors, k)
        rest = np.ones(vectors.shape[1], dtype=bool)  # columns outside every towers' block
        rest[self.columns] = False
        scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        keys = np.full((len(vectors), k), -1, dtype=np.int64)
        for row, query in enumerate(vectors):
            ranked: dict[int, tuple[float, float]] = {}  # key -> (score, tie-break by own cosine)
            for score, prototype in zip(proto_scores[row], proto_ids[row]):
                for key in self.members[prototype]:
                    vector = vector_of(int(key))
                    total = float(score) + float(vector[rest] @ query[rest])
                    ranked[int(key)] = max(ranked.get(int(key), (-np.inf, -np.inf)), (total, float(vector @ query)))
            for score, key in zip(vector_scores[row], vector_keys[row]):
                if key >= 0:
                    ranked[int(key)] = max(ranked.get(int(key), (-np.inf, -np.inf)), (float(score), float(score)))
            best = sorted(ranked.items(), key=lambda item: item[1], reverse=True)[:k]
            for column, (key, (score, _)) in enumerate(best):
                scores[row, column], keys[row, column] = score, key
        return scores, keys


def _key(key_of: Callable[[str], int], product_id: str) -> int:
    try:
        return key_of(product_id)
    except UnknownProductError:  # removed from the catalog since training
        return -1
