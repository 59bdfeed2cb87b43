"""Turning chunk scores into one ranking: chunking, the hybrid K-way merge, and the sliding window.

Pure functions over numpy arrays; positions are indices into the candidate list as retrieved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def chunk_slices(count: int, size: int) -> list[slice]:
    """Consecutive chunks of ``size`` over ``count`` retrieved candidates; the last may be shorter."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def hybrid_merge(local: Sequence[np.ndarray], absolute: Sequence[np.ndarray]) -> list[tuple[int, int]]:
    """Pailitao-VL's hybrid merge: sort each chunk by its local scores, then repeatedly take the chunk
    head with the highest absolute score r.

    ``local[c]`` and ``absolute[c]`` score the items of chunk ``c``. Returns ``(chunk, item)`` pairs, best
    first; every item appears exactly once and each chunk's items keep their local order. Ties go to
    the lower chunk (the one retrieved earlier), and within a chunk to the earlier item.

    Computed as one sort rather than a heap loop (it runs on every served query): an item can leave
    only after the items its chunk ranks above it, and when an item leaves, the next one of its chunk
    follows at once if its r is higher (it now beats every other head). So taking heads greedily is the
    same as sorting every item by the lowest r among itself and the items above it in its chunk.
    """
    if len(local) != len(absolute):
        raise ValueError(f"{len(local)} chunks of local scores, {len(absolute)} of absolute scores")
    effective, chunks, items = [], [], []
    for chunk, (loc, ab) in enumerate(zip(local, absolute)):
        if len(loc) != len(ab):
            raise ValueError(f"chunk {chunk}: {len(loc)} local scores, {len(ab)} absolute scores")
        order = np.argsort(-np.asarray(loc, dtype=np.float64), kind="stable")
        effective.append(np.minimum.accumulate(np.asarray(ab, dtype=np.float64)[order]))
        chunks.append(np.full(len(order), chunk))
        items.append(order)
    if not effective:
        return []
    chunk_of, item_of = np.concatenate(chunks), np.concatenate(items)
    # Positions within a chunk rise along the concatenation, so a stable sort on (-r, chunk) keeps them.
    best = np.lexsort((chunk_of, -np.concatenate(effective)))
    return list(zip(chunk_of[best].tolist(), item_of[best].tolist()))


def sliding_window(count: int, score: Callable[[np.ndarray], np.ndarray], window: int = 10,
                   stride: int = 5) -> np.ndarray:
    """RankGPT's sliding window: rerank the last ``window`` candidates, move up by ``stride``, repeat
    until the window reaches the top, so good candidates bubble up from the back of the list.

    ``score(positions)`` scores the candidates at those positions (retrieval order) as one list. Returns
    the positions, best first. One window after another: the passes cannot run in parallel.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    order = np.arange(count)
    if count == 0:
        return order
    start = max(0, count - window)
    while True:
        span = order[start:start + window]
        scores = np.asarray(score(span), dtype=np.float64)
        order[start:start + window] = span[np.argsort(-scores, kind="stable")]
        if start == 0:
            return order
        start = max(0, start - stride)
