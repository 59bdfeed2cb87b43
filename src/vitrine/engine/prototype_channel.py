"""ID recognition as a retrieval channel: query -> its nearest prototypes -> their products.

The prototype head dropped for embedding is kept here: a query vector is compared with every
prototype row, and the products of the best prototypes come first (each scored by its prototype's
cosine; members of one prototype ordered by their own cosine). Vector hits are merged in by score,
so a product without a prototype (added after training) can still be found when it is closer than
any prototype.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vitrine.embedding.prototypes import HEAD_FILE, PrototypeHead, PrototypeLibrary
from vitrine.errors import StoreError, UnknownProductError

CHANNELS = ("vector", "prototype")


class PrototypeChannel:
    def __init__(self, head: PrototypeHead, members: list[np.ndarray]) -> None:
        self.head, self.members = head, members

    @classmethod
    def load(cls, folder: Path, key_of: Callable[[str], int]) -> "PrototypeChannel":
        folder = Path(folder)
        if not (folder / HEAD_FILE).is_file():
            raise StoreError(f"{folder}: no prototype head here; train with 'vitrine train --objective prototype' "
                             f"(stage 2 or 3) to search with channel=prototype")
        library = PrototypeLibrary.load(folder)
        members = [np.array([k for k in (_key(key_of, pid) for pid in ids) if k >= 0], dtype=np.int64)
                   for ids in library.members()]
        return cls(PrototypeHead.load(folder), members)

    def search(self, vectors: np.ndarray, k: int, vector_scores: np.ndarray, vector_keys: np.ndarray,
               vector_of: Callable[[int], np.ndarray], *, block: int | None = None,
               scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(scores, keys) of the ``k`` best products per query, padded with -1 keys.

        Served vectors may hold the towers' vectors as their first ``block`` columns, scaled by ``scale``,
        beside other blocks (an ensemble's zero-shot block). A product found through a prototype then
        scores as if that block were its prototype's row: the prototype's cosine, weighted as the block
        is, plus the product's own score in the other blocks, so both kinds of hit share one scale.
        """
        block = vectors.shape[1] if block is None else block
        proto_scores, proto_ids = self.head.top(vectors[:, :block] / scale, k)
        scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        keys = np.full((len(vectors), k), -1, dtype=np.int64)
        for row, query in enumerate(vectors):
            ranked: dict[int, tuple[float, float]] = {}  # key -> (score, tie-break by own cosine)
            for score, prototype in zip(proto_scores[row], proto_ids[row]):
                for key in self.members[prototype]:
                    vector = vector_of(int(key))
                    own = float(vector @ query)
                    total = scale * scale * float(score) + float(vector[block:] @ query[block:])
                    ranked[int(key)] = max(ranked.get(int(key), (-np.inf, -np.inf)), (total, own))
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
