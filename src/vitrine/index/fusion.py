"""Fusing channels whose scores are not comparable (BM25, cosine): reciprocal rank fusion, or convex
fusion of min-max normalised scores (``fuse_channels``, ``search.fusion``).

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
    return _pad_rows([reciprocal_rank_fusion([ids[row] for ids in arrays], k=rrf_k, weights=weights, limit=k_out)
                      for row in range(nq)], k_out)


def _pad_rows(rows: Sequence[Sequence[tuple[int, float]]], k_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` arrays ``(len(rows), k_out)`` from fused ``(id, score)`` rows, padded with 0 and -1."""
    k_out = max(int(k_out), 0)
    scores = np.zeros((len(rows), k_out), dtype=np.float32)
    keys = np.full((len(rows), k_out), -1, dtype=np.int64)
    for row, fused in enumerate(rows):
        for col, (id_, score) in enumerate(fused[:k_out]):
            keys[row, col], scores[row, col] = id_, score
    return scores, keys


FUSIONS = ("rrf", "convex")


def convex_fusion(scores: Sequence[Sequence[float]], rankings: Sequence[Sequence[int]],
                  weights: Sequence[float] | None = None, limit: int | None = None) -> list[tuple[int, float]]:
    """Score fusion: each channel's scores min-max normalised over the ids it returned, then a weighted sum
    (weights normalised to sum to 1; a channel that did not return an id gives it 0, its own minimum).

    Unlike RRF it keeps how *far* apart a channel's candidates are, not only their order: a listing whose
    BM25 score towers over the rest keeps that lead (Bruch, Gai & Ingber, "An analysis of fusion functions
    for hybrid retrieval", TOIS 2023; Weaviate's ``relativeScoreFusion``). Ids below 0 are padding.
    """
    if len(scores) != len(rankings):
        raise ValueError(f"{len(scores)} score lists for {len(rankings)} rankings")
    weights = [1.0] * len(rankings) if weights is None else [float(w) for w in weights]
    if len(weights) != len(rankings) or any(w < 0 for w in weights) or not sum(weights) > 0:
        raise ValueError(f"convex fusion needs one non-negative weight per ranking, not all 0; got {weights}")
    totals: dict[int, float] = {}
    for channel_scores, ranking, weight in zip(scores, rankings, weights):
        ids = np.asarray(ranking, dtype=np.int64).reshape(-1)
        values = np.asarray(channel_scores, dtype=np.float64).reshape(-1)
        if len(ids) != len(values):
            raise ValueError(f"{len(values)} scores for {len(ids)} ids")
        keep = ids >= 0
        ids, values = ids[keep], values[keep]
        if not len(ids):
            continue
        _, first = np.unique(ids, return_index=True)  # a repeat within one ranking: only its first score counts
        first.sort()
        ids, values = ids[first], values[first]
        spread = values.max() - values.min()
        normalised = (values - values.min()) / spread if spread > 0 else np.ones_like(values)
        share = weight / sum(weights)
        for id_, value in zip(ids.tolist(), normalised.tolist()):
            totals[id_] = totals.get(id_, 0.0) + share * value
    fused = sorted(totals.items(), key=lambda item: -item[1])
    return fused if limit is None else fused[:max(int(limit), 0)]


def fuse_channels(method: str, score_arrays: Sequence[np.ndarray], id_arrays: Sequence[np.ndarray], k_out: int, *,
                  rrf_k: int = 60, weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ``(nq, k_i)`` channel results row by row with ``method`` (``FUSIONS``): ``rrf`` reads the ids'
    order only, ``convex`` their scores too. Returns ``(scores, ids)``, each ``(nq, k_out)``, padded with -1 ids."""
    if method == "rrf":
        return fuse_batches(id_arrays, k_out, rrf_k=rrf_k, weights=weights)
    if method != "convex":
        raise ValueError(f"unknown fusion {method!r} (choose from {', '.join(FUSIONS)})")
    ids = [np.atleast_2d(np.asarray(a, dtype=np.int64)) for a in id_arrays]
    values = [np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in score_arrays]
    return _pad_rows([convex_fusion([v[row] for v in values], [i[row] for i in ids], weights, limit=k_out)
                      for row in range(ids[0].shape[0])], k_out)
