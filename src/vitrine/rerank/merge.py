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
    """
    if len(local) != len(absolute):
        raise ValueError(f"{len(local)} chunks of local scores, {len(absolute)} of absolute scores")
    for chunk, (loc, ab) in enumerate(zip(local, absolute)):
        if len(loc) != len(ab):
            raise ValueError(f"chunk {chunk}: {len(loc)} local scores, {len(ab)} absolute scores")
    width = max((len(loc) for loc in local), default=0)
    if width == 0:
        return []
    valid = np.arange(width) < np.array([len(loc) for loc in local])[:, None]
    padded_local, padded_absolute = np.zeros(valid.shape), np.zeros(valid.shape)
    padded_local[valid] = np.concatenate(local)
    padded_absolute[valid] = np.concatenate(absolute)
    return [divmod(int(flat), width) for flat in _merge(padded_local, padded_absolute, valid)]


def merge_chunks(local: np.ndarray, absolute: np.ndarray, size: int) -> np.ndarray:
    """``hybrid_merge`` of one list cut into consecutive chunks of ``size`` (``chunk_slices``), on its
    ``(K,)`` score arrays: the candidates' positions, best first. What a served query runs."""
    count = len(local)
    if len(absolute) != count:
        raise ValueError(f"{count} local scores, {len(absolute)} absolute scores")
    chunks = -(-count // size)
    padded_local, padded_absolute = np.zeros(chunks * size), np.zeros(chunks * size)
    padded_local[:count], padded_absolute[:count] = local, absolute
    valid = (np.arange(chunks * size) < count).reshape(chunks, size)
    return _merge(padded_local.reshape(chunks, size), padded_absolute.reshape(chunks, size), valid)


def _merge(local: np.ndarray, absolute: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The merge on ``(chunks, width)`` arrays, ``valid`` marking real items: their flat indices, best first.

    One sort rather than a heap loop (it runs on every served query): an item can leave only after the
    items its chunk ranks above it, and when an item leaves, the next one of its chunk follows at once
    if its r is higher (it now beats every other head). So taking heads greedily is the same as sorting
    every item by the lowest r among itself and the items above it in its chunk.
    """
    chunks, width = local.shape
    # Padding sorts after its chunk's real items and, at r = +inf, never lowers a running minimum.
    order = (np.argsort(np.where(valid, -local, np.inf), axis=1, kind="stable")
             + np.arange(0, chunks * width, width)[:, None]).ravel()
    effective = np.minimum.accumulate(np.where(valid, absolute, np.inf).ravel()[order].reshape(chunks, width), axis=1)
    # Flattening keeps each chunk's items in their local order, so a stable sort on (-r, chunk) keeps it too.
    ranked = order[np.lexsort((np.repeat(np.arange(chunks), width), -effective.ravel()))]
    return ranked[valid.ravel()[ranked]]


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
