"""False-negative masks: which keys must not be pushed away from a query.

A key is *not* a negative for a query when it is the same product, a listing of the same group,
a product sharing most of its keywords (MAKE), or another product graded relevant to the same query.
Product-level relations are precomputed once as a sparse matrix; the per-batch mask is a lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from vitrine.training.keywords import keyword_overlap


def equivalence_matrix(groups: Sequence[str | None], keywords: Sequence[Sequence[str]] | None = None,
                       keyword_threshold: float = 0.5) -> sp.csr_matrix:
    """``(n, n)`` boolean: products that are the same item (itself, same group) or keyword twins."""
    n = len(groups)
    relation = sp.identity(n, dtype=bool, format="csr")
    labelled = [(row, group) for row, group in enumerate(groups) if group]
    if labelled:
        names = {group: col for col, group in enumerate(sorted({g for _, g in labelled}))}
        membership = sp.csr_matrix((np.ones(len(labelled), dtype=np.int32),
                                    ([row for row, _ in labelled], [names[g] for _, g in labelled])),
                                   shape=(n, len(names)))
        relation = relation + (membership @ membership.T).astype(bool)
    if keywords is not None and keyword_threshold <= 1.0:
        relation = relation + keyword_twins(keywords, keyword_threshold)
    return relation.astype(bool).tocsr()


def keyword_twins(keywords: Sequence[Sequence[str]], threshold: float) -> sp.csr_matrix:
    """Pairs whose keyword Jaccard overlap reaches ``threshold`` (sparse; never forms the dense n×n)."""
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for row, words in enumerate(keywords):
        for word in set(words):
            rows.append(row)
            cols.append(vocabulary.setdefault(word, len(vocabulary)))
    n = len(keywords)
    if not rows:
        return sp.csr_matrix((n, n), dtype=bool)
    incidence = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(n, len(vocabulary)))
    shared = (incidence @ incidence.T).tocoo()
    sizes = np.asarray(incidence.sum(axis=1)).ravel()
    union = sizes[shared.row] + sizes[shared.col] - shared.data
    keep = shared.data / np.maximum(union, 1) >= threshold
    return sp.csr_matrix((np.ones(keep.sum(), dtype=bool), (shared.row[keep], shared.col[keep])), shape=(n, n))


def batch_mask(equivalent: sp.csr_matrix, positives: np.ndarray, keys: np.ndarray,
               relevant: Sequence[np.ndarray] | None = None) -> torch.Tensor:
    """``(B, N)`` True where key ``keys[j]`` is a false negative for the query whose positive is
    ``positives[i]``. The loss keeps each query's own positive column regardless."""
    mask = equivalent[positives][:, keys].toarray()
    if relevant is not None:
        for row, also_relevant in enumerate(relevant):
            if len(also_relevant):
                mask[row] |= np.isin(keys, also_relevant)
    return torch.from_numpy(mask)


__all__ = ["batch_mask", "equivalence_matrix", "keyword_overlap", "keyword_twins"]
