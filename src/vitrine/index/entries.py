"""Index entries per image, and grouping hits back to one per product.

With ``index.entries = "image"`` a product with three photos has three vectors. Their ids pack the
product's catalog key and the image's slot into one int64 (``key << SLOT_BITS | slot``), so an id
alone says which product it belongs to; results are then grouped by product, keeping the best
score, so a product with many look-alike photos cannot fill the top-k by itself.
"""

from __future__ import annotations

import numpy as np

SLOT_BITS = 8
MAX_SLOTS = 1 << SLOT_BITS
"""Images one product may have as separate entries; the engine refuses more with a clear error."""


def entry_ids(key: int, slots: int) -> np.ndarray:
    """Ids of a product's entries, one per slot (a product without images has one slot)."""
    return (np.int64(key) << SLOT_BITS) | np.arange(max(slots, 1), dtype=np.int64)


def product_keys(ids: np.ndarray) -> np.ndarray:
    """The catalog key of each entry id (padding -1 stays -1)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(ids >= 0, ids >> SLOT_BITS, -1)


def group_by_product(scores: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row by row, the first (best) occurrence of each key, up to ``k``: rows are sorted best first,
    so the first occurrence carries the product's maximum score. Padded with score 0 and id -1."""
    rows = keys.shape[0]
    out_scores = np.zeros((rows, k), dtype=np.float32)
    out_keys = np.full((rows, k), -1, dtype=np.int64)
    for row in range(rows):
        valid = keys[row] >= 0
        unique, first = np.unique(keys[row][valid], return_index=True)
        order = np.sort(first)[:k]
        out_keys[row, :len(order)] = keys[row][valid][order]
        out_scores[row, :len(order)] = scores[row][valid][order]
    return out_scores, out_keys
