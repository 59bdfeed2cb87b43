"""Two evaluation reports of the same queries, compared query by query.

A difference of means says little on a few hundred queries; what matters is whether the per-query
differences could be noise. Each metric gets the mean of ``b − a`` over the queries both reports scored,
with a 95% bootstrap interval (queries resampled, BCa): an interval across 0 is a tie the queries cannot break.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrine.errors import VitrineError
from vitrine.rerank.metrics import paired_difference


@dataclass
class MetricComparison:
    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "b better"
        if self.high < 0:
            return "a better"
        return "tie"


@dataclass
class Comparison:
    shared: int
    only_a: int
    only_b: int
    metrics: list[MetricComparison]


def load_report(path: Path) -> dict:
    """An ``eval-*.json`` report written by ``vitrine eval``; a clear error for anything else."""
    try:
        report = json.loads(Path(path).read_text())
    except OSError as exc:
        raise VitrineError(f"{path}: cannot read the report ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise VitrineError(f"{path}: not a JSON report ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("per_query"), list):
        raise VitrineError(f"{path}: not an evaluation report (no per_query list); write one with 'vitrine eval'")
    return report


def compare_reports(a: dict, b: dict, *, metrics: list[str] | None = None, seed: int = 0) -> Comparison:
    """Pairs the two reports' queries by where they came from (file and line, or image path)."""
    scores_a, scores_b = _per_query(a), _per_query(b)
    shared = [where for where in scores_a if where in scores_b]
    if not shared:
        raise VitrineError("the two reports have no query in common (compare reports of the same query file)")
    names = metrics or [name for name in scores_a[shared[0]] if name in scores_b[shared[0]]]
    rows = []
    for name in names:
        try:
            left = np.array([scores_a[where][name] for where in shared], dtype=np.float64)
            right = np.array([scores_b[where][name] for where in shared], dtype=np.float64)
        except KeyError:
            raise VitrineError(f"metric {name!r} is not in both reports") from None
        difference, low, high = paired_difference(right, left, seed=seed)
        rows.append(MetricComparison(name, float(left.mean()), float(right.mean()), difference, low, high))
    return Comparison(len(shared), len(scores_a) - len(shared), len(scores_b) - len(shared), rows)


def _per_query(report: dict) -> dict[str, dict[str, float]]:
    scores: dict[str, dict[str, float]] = {}
    for query in report["per_query"]:
        where = query.get("where")
        if where in scores:
            raise VitrineError(f"query {where!r} appears twice in one report; cannot pair queries")
        scores[where] = query["metrics"]
    return scores
