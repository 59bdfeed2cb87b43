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


def query_metrics(rankings: Sequence[Sequence[int]], ideals: Sequence[np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Per query: instance hit-rate (NaN for a query without an instance match), concept hit-rate@1 (NaN
    without a concept-or-better match), NDCG@10; what paired comparisons of two rankers are made of."""
    instance, concept, ndcg = [], [], []
    for ranked, ideal in zip(rankings, ideals):
        ideal = np.asarray(ideal)
        hit = instance_hit_rate(ranked, int((ideal == 3).sum()), k)
        instance.append(math.nan if hit is None else hit)
        concept.append(concept_hit_rate(ranked) if (ideal >= 2).any() else math.nan)
        ndcg.append(ndcg_at_k(ranked, ideal, 10))
    return {"instance_hit_rate": np.array(instance, dtype=np.float64),
            "concept_hit_rate@1": np.array(concept, dtype=np.float64), "ndcg@10": np.array(ndcg, dtype=np.float64)}


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over the queries each metric applies to (0.0 where none does)."""
    return {name: float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
            for name, values in per_query.items()}


def list_metrics(rankings: Sequence[Sequence[int]], ideals: Sequence[np.ndarray], k: int) -> dict[str, float]:
    """Means over queries: instance hit-rate (queries with an instance match), concept hit-rate@1
    (queries with a concept-or-better match), NDCG@10."""
    return mean_metrics(query_metrics(rankings, ideals, k))


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95, resamples: int = 10_000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a − b`` over the queries both score (per-query figures of two rankers on the same
    queries) and its bootstrap confidence interval (queries resampled, BCa): ``(mean, low, high)``.
    An interval that straddles 0 says the val split cannot tell the two apart."""
    from scipy.stats import bootstrap

    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    difference = difference[np.isfinite(difference)]
    if len(difference) < 2 or np.ptp(difference) == 0:
        mean = float(difference.mean()) if len(difference) else 0.0
        return mean, mean, mean
    interval = bootstrap((difference,), np.mean, confidence_level=confidence, n_resamples=resamples,
                         random_state=np.random.default_rng(seed)).confidence_interval
    return float(difference.mean()), float(interval.low), float(interval.high)
