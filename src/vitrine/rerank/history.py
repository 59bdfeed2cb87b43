"""Query history: past queries and the products they led to, a reranking signal the retriever lacks.

The retriever compares a query with what the *catalog* says about a product (its title, its iconic
photo). A shop also knows which queries found each product before (click and purchase logs; here the
training pairs): a shopper's photo that looks like earlier shoppers' photos of a product, or a query
worded like earlier queries for it, is good evidence on its own. ``QueryHistory`` keeps those past query
vectors (from the same embedder as the reranker's features) with the product each led to, and gives,
per candidate, the best cosine between the new query and the product's past queries and how many
there were. Products without history (new listings) get -1 and 0, and the reranker learns to fall
back on the retrieval score for them.

A query never meets itself: rows carry the key of the query they came from, and ``exclude`` drops
them, so the training lists of a reranker trained on the same queries its history holds see what
val queries see.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vitrine.config import write_atomic

HISTORY_FILE = "history.npz"
NO_HISTORY = -1.0
"""The best cosine reported for a product nobody has searched for yet (below any real cosine)."""


@dataclass
class QueryHistory:
    vectors: np.ndarray
    """``(N, D)`` unit rows: past query vectors, kept in float16 (as saved): half the memory of a shop's history,
    and the scan every reranked query makes reads half the bytes (at 1,280-d, about twice as fast on this CPU)."""
    keys: np.ndarray
    """``(N,)`` the catalog key of the product each past query led to."""
    sources: list[str]
    """``N`` keys of the queries the rows came from (one query may lead to several products)."""
    _by_key: np.ndarray = field(init=False, repr=False)
    """Row order that puts each product's rows side by side (segments in ``_segment_keys`` order)."""
    _segment_keys: np.ndarray = field(init=False, repr=False)
    _segment_starts: np.ndarray = field(init=False, repr=False)
    _segment_lengths: np.ndarray = field(init=False, repr=False)
    _position_of_row: np.ndarray = field(init=False, repr=False)
    """Where each row sits in ``_by_key`` order."""
    _rows_of_source: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, dtype=np.float16)
        self.keys = np.asarray(self.keys, dtype=np.int64)
        if len(self.vectors) != len(self.keys) or len(self.keys) != len(self.sources):
            raise ValueError(f"history rows disagree: {len(self.vectors)} vectors, {len(self.keys)} keys, "
                             f"{len(self.sources)} sources")
        self._by_key = np.argsort(self.keys, kind="stable")
        self._segment_keys, self._segment_starts, self._segment_lengths = np.unique(
            self.keys[self._by_key], return_index=True, return_counts=True)
        self._position_of_row = np.argsort(self._by_key)
        self._rows_of_source = _group(self.sources)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def mean_count(self) -> float:
        """Past queries per product that has any: the scale ``evidence`` counts are read against."""
        return len(self.keys) / len(self._segment_keys) if len(self._segment_keys) else 0.0

    def evidence(self, query: np.ndarray, keys: Sequence[int],
                 exclude: str | Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per key: the best cosine of ``query`` with the product's past queries (``NO_HISTORY`` if none)
        and how many past queries there were, leaving out the rows of query ``exclude`` (or of several queries).
        Compares the query with the candidates' rows only, once they are a small part of the history: the cost
        then grows with the candidates' history, not with the whole history's."""
        keys = np.asarray(keys, dtype=np.int64)
        best = np.full(len(keys), NO_HISTORY, dtype=np.float32)
        count = np.zeros(len(keys), dtype=np.float32)
        if not len(self) or not len(keys):
            return best, count
        segment = np.minimum(np.searchsorted(self._segment_keys, keys), len(self._segment_keys) - 1)
        known = np.flatnonzero(self._segment_keys[segment] == keys)
        if not len(known):
            return best, count
        starts, lengths = self._segment_starts[segment[known]], self._segment_lengths[segment[known]]
        # Through torch, not numpy: numpy's BLAS has a thread pool of its own, and the two pools fighting
        # over 2 cores turned a 0.5 ms rerank into 8 ms.
        query = torch.from_numpy(np.asarray(query, dtype=np.float16))
        gathered = 3 * int(lengths.sum()) < len(self)
        if gathered:
            # The candidates' rows are a sliver of the history (a shop's, at any scale): gather and compare
            # only them, one run per candidate (a key listed twice gets its run twice).
            bounds = np.cumsum(lengths) - lengths
            rows = self._by_key[np.repeat(starts - bounds, lengths) + np.arange(int(lengths.sum()))]
            similarity = (torch.from_numpy(self.vectors[rows]) @ query).float().numpy()
            pick = np.arange(len(known))
        else:
            # Most of a small history: one pass over every row costs less than copying most of them.
            rows, bounds, pick = self._by_key, self._segment_starts, segment[known]
            similarity = (torch.from_numpy(self.vectors) @ query).float().numpy()[rows]
        present = np.ones(len(rows), dtype=np.float32)
        own_rows = self._rows_from(exclude)
        if len(own_rows):
            own = np.isin(rows, own_rows) if gathered else self._position_of_row[own_rows]
            similarity[own], present[own] = -np.inf, 0.0
        run_best = np.maximum.reduceat(similarity, bounds)[pick]
        run_count = np.add.reduceat(present, bounds)[pick]
        seen = run_count > 0  # a product whose only past query is ``exclude`` has none
        best[known[seen]], count[known[seen]] = run_best[seen], run_count[seen]
        return best, count

    def _rows_from(self, sources: str | Sequence[str] | None) -> np.ndarray:
        """The rows that came from the query ``sources`` (one key or several; unknown keys have none)."""
        names = [] if sources is None else [sources] if isinstance(sources, str) else sources
        found = [self._rows_of_source[name] for name in names if name in self._rows_of_source]
        return np.concatenate(found) if found else np.empty(0, dtype=np.int64)

    def save(self, folder: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, vectors=self.vectors, keys=self.keys,
                 sources=np.frombuffer(json.dumps(self.sources).encode(), dtype=np.uint8))
        write_atomic(Path(folder) / HISTORY_FILE, buffer.getvalue())

    @classmethod
    def load(cls, folder: Path) -> "QueryHistory | None":
        """The history saved in a reranker folder, or ``None`` if the reranker was trained without one."""
        path = Path(folder) / HISTORY_FILE
        if not path.is_file():
            return None
        with np.load(path) as saved:
            return cls(saved["vectors"], saved["keys"],
                       json.loads(saved["sources"].tobytes().decode()))


def _group(values: Sequence) -> dict:
    rows: dict = defaultdict(list)
    for row, value in enumerate(values):
        rows[value].append(row)
    return {value: np.array(found, dtype=np.int64) for value, found in rows.items()}
