"""Which prototypes a step compares its targets with (the columns of the margin softmax).

- ``all``: every prototype (small U);
- ``nearest``: the step's budget of ``r * U`` columns is spent on its targets' nearest prototypes, read
  from a prototype-prototype neighbour table that is rebuilt every N steps from the moving head (the
  paper's "dynamic proxy update"); hard negatives, since look-alike products are the ones confused;
- ``random``: the targets plus a uniform sample up to the budget (InsightFace's Partial FC).

The columns are shared by the whole batch, so one matrix product scores them all.
"""

from __future__ import annotations

import math

import numpy as np

from vitrine.errors import VitrineError

STRATEGIES = ("all", "nearest", "random")


class PrototypeNeighbours:
    """Each prototype's nearest other prototypes, from a FAISS index over the head's unit rows.

    Below ``exact_below`` prototypes the index is exact (flat inner product); above, an IVF index
    (``sqrt(U)`` cells, ``nprobe`` searched), so a refresh at U = 10^6 takes seconds, not hours.
    Neighbour lists are computed for the prototypes a step needs and kept until the next refresh.
    """

    def __init__(self, every: int, exact_below: int = 50_000, nprobe: int = 8, seed: int = 0) -> None:
        self.every, self.exact_below, self.nprobe, self.seed = max(1, int(every)), exact_below, nprobe, seed
        self.index = None
        self.refreshed_at: int | None = None
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def due(self, step: int) -> bool:
        return self.refreshed_at is None or step - self.refreshed_at >= self.every

    def refresh(self, unit_rows: np.ndarray, step: int) -> None:
        import faiss

        rows = np.ascontiguousarray(unit_rows, dtype=np.float32)
        count, dim = rows.shape
        if count < self.exact_below:
            index = faiss.IndexFlatIP(dim)
        else:
            cells = int(math.sqrt(count))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(self.seed).choice(count, size=min(count, 40 * cells), replace=False)
            index.train(rows[np.sort(sample)])
            index.nprobe = self.nprobe
        index.add(rows)
        if count >= self.exact_below:
            index.make_direct_map()  # so a prototype's own row can be read back as its query
        self.index, self.refreshed_at, self._cache = index, step, {}

    def neighbours(self, prototypes: np.ndarray, k: int) -> np.ndarray:
        """``(len(prototypes), k)`` nearest other prototypes, best first (-1 where fewer exist)."""
        if self.index is None:
            raise VitrineError("the prototype neighbour table has not been built yet (refresh it first)")
        prototypes = np.asarray(prototypes, dtype=np.int64)
        missing = [p for p in np.unique(prototypes).tolist() if (p, k) not in self._cache]
        if missing:
            # The rows as they were at the last refresh: the table moves only when it is refreshed.
            queries = np.stack([self.index.reconstruct(int(p)) for p in missing])
            _, found = self.index.search(queries, k + 1)
            for p, row in zip(missing, found):
                row = row[row != p][:k]
                self._cache[(p, k)] = np.pad(row, (0, k - len(row)), constant_values=-1)
        return np.stack([self._cache[(int(p), k)] for p in prototypes]) if len(prototypes) else np.zeros((0, k), np.int64)


def sample_columns(targets: np.ndarray, count: int, strategy: str, ratio: float, rng: np.random.Generator,
                   neighbours: PrototypeNeighbours | None = None) -> np.ndarray | None:
    """Sorted prototype ids a step scores (always including every target); None means all ``count``."""
    if strategy not in STRATEGIES:
        raise VitrineError(f"unknown prototype negatives {strategy!r} (choose from {', '.join(STRATEGIES)})")
    budget = max(1, int(math.ceil(ratio * count)))
    if strategy == "all" or budget >= count:
        return None
    wanted = np.unique(targets[targets >= 0])
    if strategy == "nearest":
        if neighbours is None:
            raise VitrineError("nearest-prototype negatives need a neighbour table")
        per_target = max(1, (budget - len(wanted)) // max(1, len(wanted)))
        near = neighbours.neighbours(wanted, per_target)
        wanted = np.union1d(wanted, near[near >= 0])
    return _top_up(wanted, budget, count, rng)


def _top_up(chosen: np.ndarray, budget: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``chosen`` plus uniformly drawn other prototypes until ``budget`` columns are reached."""
    short = budget - len(chosen)
    if short <= 0:
        return chosen
    draw = rng.choice(count, size=min(count, short + len(chosen)), replace=False)
    extra = np.setdiff1d(draw, chosen, assume_unique=False)[:short]
    return np.union1d(chosen, extra)
