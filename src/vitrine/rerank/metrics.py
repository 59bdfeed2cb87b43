"""Ranking metrics over relevance levels (pure functions): the figures of Pailitao-VL's tables.

``ranked`` is the levels of a ranking, best first; ``ideal`` the gains (3 − level) of every labelled
product of the query, best first (it reaches beyond the K candidates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def instance_hit_rate(ranked: Sequence[int], instances: int, k: int) -> float | None:
    """Adaptive instance hit-rate: instance matches in the top ``min(k, G)`` over ``min(k, G)``, G = the
    query's instance matches (1 for a Grocery photo, so it is hit@1 there). ``None`` when G = 0."""
    cut = min(k, instances)
    if cut <= 0:
        return None
    return sum(1 for level in list(ranked)[:cut] if level == 0) / cut


def concept_hit_rate(ranked: Sequence[int]) -> float:
    """Is the top candidate at least a concept match (level 0 or 1)?"""
    return float(len(ranked) > 0 and ranked[0] <= 1)


def ndcg_at_k(ranked: Sequence[int], ideal: Sequence[float], k: int = 10) -> float:
    """NDCG@k with gain 3 − level (instance 3, concept 2, functional 1)."""
    def dcg(gains: Sequence[float]) -> float:
        return sum(g / math.log2(rank + 2) for rank, g in enumerate(list(gains)[:k]))

    best = dcg(ideal)
    return dcg([3 - int(level) for level in ranked]) / best if best > 0 else 0.0


def list_metrics(rankings: Sequence[Sequence[int]], ideals: Sequence[np.ndarray], k: int) -> dict[str, float]:
    """Means over queries: instance hit-rate (queries with an instance match), concept hit-rate@1
    (queries with a concept-or-better match), NDCG@10."""
    instance, concept, ndcg = [], [], []
    for ranked, ideal in zip(rankings, ideals):
        ideal = np.asarray(ideal)
        hit = instance_hit_rate(ranked, int((ideal == 3).sum()), k)
        if hit is not None:
            instance.append(hit)
        if (ideal >= 2).any():
            concept.append(concept_hit_rate(ranked))
        ndcg.append(ndcg_at_k(ranked, ideal, 10))
    mean = lambda values: float(np.mean(values)) if values else 0.0  # noqa: E731
    return {"instance_hit_rate": mean(instance), "concept_hit_rate@1": mean(concept), "ndcg@10": mean(ndcg)}
