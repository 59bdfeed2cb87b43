"""An index is an index: add, search, remove, save, load. Ids are int64 catalog keys."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vitrine.catalog.filters import Filter
from vitrine.errors import DimensionError


class VectorIndex(ABC):
    dim: int
    holds_attributes: bool = False
    """Whether the index keeps a filter document per entry (``vitrine.catalog.filter_document``) and can
    evaluate a ``Filter`` itself (``search(..., where=)``); if not, filters arrive as ``allowed`` ids."""

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray, documents: Sequence[Mapping] | None = None) -> None:
        """Add vectors under ``ids``; an id already present is replaced (an update). ``documents`` (one
        filter document per id) are kept by an index that ``holds_attributes`` and ignored by others."""

    def set_documents(self, ids: np.ndarray, documents: Sequence[Mapping]) -> None:
        """Replace the filter documents of held entries, vectors unchanged (nothing to do for an index
        that does not hold attributes)."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int:
        """Remove the given ids; unknown ids are ignored. Returns how many were removed."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               where: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(len(queries), k)``, best first; missing slots have id -1.

        ``allowed`` (ids) restricts the search to those entries *during* the search, so a selective
        filter still fills all ``k`` slots whenever ``k`` allowed entries exist. ``where`` does the same
        with a filter the index evaluates on its documents (only if it ``holds_attributes``)."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """Every id held, in no particular order."""

    @abstractmethod
    def __len__(self) -> int: ...

    def __contains__(self, id_: object) -> bool:
        return bool(np.isin(np.int64(id_), self.ids()))

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @abstractmethod
    def describe(self) -> dict: ...

    def check_batch(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` for one ``add``: distinct int64 ids, one per checked float32 vector."""
        vectors = self.check(vectors)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids in one add must be distinct")
        return ids, vectors

    def check(self, vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
        """``vectors`` as contiguous float32 ``(n, dim)``, or a ``DimensionError`` saying why not."""
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise DimensionError(f"{what} have shape {tuple(np.shape(vectors))}; this index holds {self.dim}-d vectors")
        return np.ascontiguousarray(array)
