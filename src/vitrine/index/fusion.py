"""Reciprocal rank fusion: merge rankings from channels whose scores are not comparable (BM25, cosine).

RRF (Cormack, Clarke & Büttcher, SIGIR 2009) uses only ranks, so no channel needs calibrating:
``score(d) = Σ_i w_i / (k + rank_i(d))`` with ranks from 1. A document missing from a ranking gets
nothing from it; ids below 0 are padding and are skipped without using up a rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = 60, weights: Sequence[float] | None = None,
                           limit: int | None = None) -> list[tuple[int, float]]:
    """``(id, score)`` best first; ties keep the order in which ids were first seen (ranking by ranking)."""
    if k < 0:
        raise ValueError(f"rrf k must be >= 0, got {k}")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    totals: dict[int, float] = {}  # insertion order = first appearance, which the stable sort keeps for ties
    for ranking, weight in zip(rankings, weights):
        rank = 0
        seen: set[int] = set()
        for id_ in np.asarray(ranking, dtype=np.int64).reshape(-1).tolist():
            if id_ < 0 or id_ in seen:  # padding, or a repeat within one ranking (only its best rank counts)
                continue
            seen.add(id_)
            rank += 1
            totals[id_] = totals.get(id_, 0.0) + float(weight) / (k + rank)
    fused = sorted(totals.items(), key=lambda item: -item[1])
    return fused if limit is None else fused[:max(int(limit), 0)]


def fuse_batches(id_arrays: Sequence[np.ndarray], k_out: int, rrf_k: int = 60,
                 weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RRF row by row over several ``(nq, k_i)`` id arrays (one per channel, best first).

    Returns ``(scores, ids)``, each ``(nq, k_out)``, padded with score 0 and id -1."""
    arrays = [np.asarray(ids, dtype=np.int64) for ids in id_arrays]
    arrays = [ids[None, :] if ids.ndim == 1 else ids for ids in arrays]
    if not arrays:
        raise ValueError("fuse_batches needs at least one id array")
    nq = arrays[0].shape[0]
    if any(ids.ndim != 2 or ids.shape[0] != nq for ids in arrays):
        raise ValueError(f"id arrays must all be (nq, k_i); got shapes {[ids.shape for ids in arrays]}")
    k_out = max(int(k_out), 0)
    scores = np.zeros((nq, k_out), dtype=np.float32)
    keys = np.full((nq, k_out), -1, dtype=np.int64)
    for row in range(nq):
        fused = reciprocal_rank_fusion([ids[row] for ids in arrays], k=rrf_k, weights=weights, limit=k_out)
        for col, (id_, score) in enumerate(fused):
            keys[row, col], scores[row, col] = id_, score
    return scores, keys
