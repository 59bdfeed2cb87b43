"""Ranking metrics as pure functions of a ranked id list and graded relevance.

``relevant`` maps product ids to grades; a grade above zero counts as relevant. NDCG uses the grade
itself as the gain (linear gain), so graded data such as CrowdFlower's (gain = relevance - 1) works.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def _relevant_ids(relevant: Mapping[str, float]) -> set[str]:
    return {pid for pid, grade in relevant.items() if grade > 0}


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """Share of the relevant products found in the top ``k``."""
    wanted = _relevant_ids(relevant)
    if not wanted:
        return 0.0
    return len(wanted.intersection(ranked[:k])) / len(wanted)


def precision_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    wanted = _relevant_ids(relevant)
    return sum(1 for pid in ranked[:k] if pid in wanted) / k


def average_precision_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    """AP@k: mean of precision at each relevant rank, over ``min(#relevant, k)``."""
    wanted = _relevant_ids(relevant)
    if not wanted:
        return 0.0
    hits, total = 0, 0.0
    for rank, pid in enumerate(ranked[:k], start=1):
        if pid in wanted:
            hits += 1
            total += hits / rank
    return total / min(len(wanted), k)


def dcg_at_k(gains: Sequence[float], k: int) -> float:
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains[:k], start=1))


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, float], k: int) -> float:
    ideal = dcg_at_k(sorted((g for g in relevant.values() if g > 0), reverse=True), k)
    if ideal == 0:
        return 0.0
    return dcg_at_k([max(relevant.get(pid, 0), 0) for pid in ranked], k) / ideal


def reciprocal_rank(ranked: Sequence[str], relevant: Mapping[str, float]) -> float:
    """1 / rank of the first relevant product; 0 when none was retrieved."""
    wanted = _relevant_ids(relevant)
    for rank, pid in enumerate(ranked, start=1):
        if pid in wanted:
            return 1.0 / rank
    return 0.0


def query_metrics(ranked: Sequence[str], relevant: Mapping[str, float],
                  recall_ks: Sequence[int] = (1, 5, 10), k: int = 10) -> dict[str, float]:
    """The standard set for one query: Recall@{1,5,10}, mAP@10, NDCG@10, MRR."""
    metrics = {f"recall@{cut}": recall_at_k(ranked, relevant, cut) for cut in recall_ks}
    metrics[f"map@{k}"] = average_precision_at_k(ranked, relevant, k)
    metrics[f"ndcg@{k}"] = ndcg_at_k(ranked, relevant, k)
    metrics["mrr"] = reciprocal_rank(ranked, relevant)
    return metrics


def mean_metrics(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    if not per_query:
        return {}
    return {name: sum(m[name] for m in per_query) / len(per_query) for name in per_query[0]}
