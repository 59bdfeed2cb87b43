"""FAISS behind ``VectorIndex``: exact search while small, HNSW once large, or any factory string.

FAISS graph indexes cannot delete, so every kind is treated the same way: entries sit at dense
positions; ``_keys[pos]`` holds the catalog key (-1 once deleted); deleted positions are masked
with an ``IDSelector`` at search time, and the index is rebuilt from its own stored vectors when
the deleted share passes ``compact_ratio``.

A factory with a refine stage (``IVF1024,PQ64,Refine(SQfp16)``, ``IVF1024,PQ64,RFlat``) is FAISS's
``IndexRefine``: its base index proposes ``k × index.refine_k_factor`` candidates, which are re-scored
with the refine copy of the vectors. Search settings (efSearch, nprobe, the ID selector) reach the
base index through ``IndexRefineSearchParameters``; stored vectors are read from the refine copy.

Filtered searches score the admitted vectors exactly when there are few of them; otherwise the index
searches under an ``IDSelector``, an HNSW walk with its beam widened by 1 / (admitted share).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np

from vitrine.catalog.filters import Filter
from vitrine.config import IndexConfig, write_atomic
from vitrine.errors import StoreError
from vitrine.index.base import VectorIndex

FLAT = "Flat"
FILE_NAME = "faiss.npz"
HNSW_VECTORS = {"fp16": ",SQfp16", "float32": "", "sq8": ",SQ8"}
"""``index.hnsw_vectors`` → the storage suffix of ``auto``'s HNSW factory string."""


class FaissIndex(VectorIndex):
    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        self.dim = int(dim)
        self.config = config or IndexConfig()
        self._index = self._new_index(self._factory_for(0))
        self._keys = np.zeros(0, dtype=np.int64)
        self._position: dict[int, int] = {}
        self._selector: faiss.IDSelector | None = None

    @property
    def factory(self) -> str:
        return self._kind

    def __len__(self) -> int:
        return len(self._position)

    def ids(self) -> np.ndarray:
        return np.fromiter(self._position.keys(), dtype=np.int64, count=len(self._position))

    def __contains__(self, id_: object) -> bool:
        return int(id_) in self._position  # type: ignore[arg-type]

    def add(self, ids: np.ndarray, vectors: np.ndarray, documents: Sequence[Mapping] | None = None) -> None:
        """``documents`` are ignored: the catalog evaluates filters for FAISS and passes ``allowed`` ids."""
        ids, vectors = self.check_batch(ids, vectors)
        self.remove(ids)
        if self._should_grow(len(self) + len(ids)):
            self._rebuild(self._factory_for(len(self) + len(ids)))
        if not self._index.is_trained:
            self._index.train(vectors)
        start = self._index.ntotal
        self._index.add(vectors)
        self._keys = np.concatenate([self._keys, ids])
        self._position.update(zip(ids.tolist(), range(start, start + len(ids))))

    def remove(self, ids: np.ndarray) -> int:
        removed = 0
        for id_ in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            position = self._position.pop(id_, None)
            if position is not None:
                self._keys[position] = -1
                removed += 1
        if removed:
            self._selector = None
            if self._deleted() > self.config.compact_ratio * max(self._index.ntotal, 1):
                self._rebuild(self._kind)
        return removed

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               where: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        if where is not None:
            raise StoreError("a FAISS index holds no attributes: evaluate the filter in the catalog and pass allowed ids")
        queries = self.check(queries, "queries")
        if k <= 0 or len(self) == 0:
            return _empty(len(queries), k)
        if allowed is not None:
            return self._filtered_search(queries, k, np.asarray(allowed, dtype=np.int64).reshape(-1))
        scores, positions = self._index.search(queries, k, params=self._search_params())
        return scores, self._keys_at(positions)

    def _keys_at(self, positions: np.ndarray) -> np.ndarray:
        return np.where(positions >= 0, self._keys[np.maximum(positions, 0)], -1)

    def _filtered_search(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search only ``allowed`` ids. Few of them: score them all (exact, and cheaper than a graph walk
        that must skip 99% of what it meets). Many: the index's own search restricted by an
        ``IDSelector``; rows an approximate index could not fill fall back to the exact scan."""
        positions = np.fromiter((self._position.get(id_, -1) for id_ in allowed.tolist()), dtype=np.int64,
                                count=len(allowed))
        positions = np.unique(positions[positions >= 0])
        if len(positions) == 0:
            return _empty(len(queries), k)
        share = len(positions) / max(self._index.ntotal, 1)
        if len(positions) <= max(self.config.filter_exact_max, k) or self._walk_dearer_than_scan(share, len(positions), k):
            return self._exact_among(queries, k, positions)
        params = _search_parameters(self._index, self.config, faiss.IDSelectorBatch(positions), k, share)
        scores, found = self._index.search(queries, k, params=params)
        short = np.flatnonzero((found < 0).any(axis=1))
        if len(short):
            scores[short], found[short] = self._exact_positions(queries[short], k, positions)
        return scores, self._keys_at(found)

    def _walk_dearer_than_scan(self, share: float, allowed: int, k: int) -> bool:
        """A filtered HNSW walk, its beam widened by 1 / share, scores about M neighbours of each of
        efSearch / share nodes; once that passes the admitted count, scoring those is cheaper (and exact)."""
        graph = _base(self._index)
        if not isinstance(graph, faiss.IndexHNSW):
            return False
        return max(self.config.ef_search, k) / share * graph.hnsw.nb_neighbors(1) >= allowed

    def _exact_among(self, queries: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, found = self._exact_positions(queries, k, positions)
        return scores, self._keys_at(found)

    def _exact_positions(self, queries: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inner products with the stored vectors at ``positions`` (as the index holds them: for PQ
        the codes' reconstruction, with a refine stage its copy), top ``k`` per query, padded with -1."""
        vectors = self._stored(positions)
        scores, rows = faiss.knn(queries, vectors, min(k, len(positions)), metric=faiss.METRIC_INNER_PRODUCT)
        out_scores, out_positions = _empty(len(queries), k)
        width = rows.shape[1]
        out_scores[:, :width] = scores
        out_positions[:, :width] = np.where(rows >= 0, positions[np.maximum(rows, 0)], -1)
        return out_scores, out_positions

    def _stored(self, positions: np.ndarray) -> np.ndarray:
        if isinstance(self._index, faiss.IndexIVF) and not self._index.direct_map.type:
            self._index.make_direct_map()
        return self._index.reconstruct_batch(positions)

    def reconstruct(self, id_: int) -> np.ndarray:
        return self._stored(np.array([self._position[int(id_)]], dtype=np.int64))[0]

    def tune(self, **settings: int | float) -> None:
        """Change search settings of ``IndexConfig`` (``ef_search``, ``nprobe``, ``refine_k_factor``)
        for the searches that follow, without rebuilding; the caller's config object is not modified."""
        unknown = set(settings) - {"ef_search", "nprobe", "refine_k_factor"}
        if unknown:
            raise ValueError(f"not a search setting: {', '.join(sorted(unknown))}")
        self.config = dataclasses.replace(self.config, **settings)
        self._apply_search_settings()

    def save(self, folder: Path) -> None:
        """One file, replaced atomically: vectors and keys can never disagree after a crash."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, index=faiss.serialize_index(self._index), keys=self._keys,
                 meta=np.frombuffer(json.dumps(self.describe()).encode(), dtype=np.uint8))
        write_atomic(folder / FILE_NAME, buffer.getvalue())

    @classmethod
    def exists(cls, folder: Path) -> bool:
        return (Path(folder) / FILE_NAME).is_file()

    @classmethod
    def load(cls, folder: Path, config: IndexConfig | None = None) -> "FaissIndex":
        path = Path(folder) / FILE_NAME
        try:
            with np.load(path) as saved:
                index = faiss.deserialize_index(saved["index"])
                keys = saved["keys"]
                meta = json.loads(saved["meta"].tobytes())
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise StoreError(f"{path}: cannot read the vector index ({exc}); rebuild it with 'vitrine index --rebuild'") from None
        if len(keys) != index.ntotal:
            raise StoreError(f"{folder}: index holds {index.ntotal} vectors but {len(keys)} keys; rebuild it")
        self = cls(index.d, config)
        self._index, self._kind, self._keys = index, meta["factory"], keys
        self._position = {int(key): pos for pos, key in enumerate(keys.tolist()) if key >= 0}
        self._apply_search_settings()
        return self

    def describe(self) -> dict:
        return {"backend": "faiss", "factory": self._kind, "dim": self.dim, "count": len(self),
                "deleted": self._deleted()}

    # --- internals ---------------------------------------------------------------------------

    def _factory_for(self, size: int) -> str:
        if self.config.factory != "auto":
            return self.config.factory
        if self.config.hnsw_vectors not in HNSW_VECTORS:  # refused up front, not when the catalog grows
            raise StoreError(f"index.hnsw_vectors must be one of {', '.join(HNSW_VECTORS)}, "
                             f"not {self.config.hnsw_vectors!r}")
        if size < self.config.hnsw_threshold:
            return FLAT
        return f"HNSW{self.config.hnsw_m}{HNSW_VECTORS[self.config.hnsw_vectors]}"

    def _should_grow(self, size: int) -> bool:
        return self.config.factory == "auto" and self._kind == FLAT and self._factory_for(size) != FLAT

    def _new_index(self, factory: str) -> faiss.Index:
        try:
            index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise StoreError(f"FAISS cannot build index {factory!r}: {str(exc).splitlines()[-1]}") from None
        self._kind = factory
        base = _base(index)
        if isinstance(base, faiss.IndexHNSW):
            base.hnsw.efConstruction = self.config.ef_construction
        if hasattr(base, "do_polysemous_training"):
            # The factory turns it on for PQ. It only serves polysemous (Hamming) filtering, which vitrine
            # never enables, and it made training IVF256,PQ64 on 20,000 vectors take 223 s instead of 48 s.
            base.do_polysemous_training = False
        self._index = index
        self._apply_search_settings()
        return index

    def _apply_search_settings(self) -> None:
        """The config's search settings as the index's own defaults (used by searches without params)."""
        if isinstance(self._index, faiss.IndexRefine):
            self._index.k_factor = self.config.refine_k_factor
        base = _base(self._index)
        if isinstance(base, faiss.IndexHNSW):
            base.hnsw.efSearch = self.config.ef_search
        if isinstance(base, faiss.IndexIVF):
            base.nprobe = self.config.nprobe

    def _deleted(self) -> int:
        return int(self._index.ntotal - len(self._position))

    def _search_params(self) -> faiss.SearchParameters | None:
        if self._deleted() == 0:
            return None
        if self._selector is None:
            deleted = faiss.IDSelectorBatch(np.flatnonzero(self._keys < 0).astype(np.int64))
            self._selector = faiss.IDSelectorNot(deleted)
            self._selector.referenced = deleted  # the wrapper does not keep its argument alive
        return _search_parameters(self._index, self.config, self._selector)

    def _rebuild(self, factory: str) -> None:
        """Re-add the live vectors to a fresh index of kind ``factory``, dropping deleted slots."""
        live = np.flatnonzero(self._keys >= 0)
        vectors = self._stored(live) if len(live) else np.zeros((0, self.dim), np.float32)
        keys = self._keys[live]
        self._new_index(factory)
        if len(live):
            if not self._index.is_trained:
                self._index.train(vectors)
            self._index.add(vectors)
        self._keys = keys
        self._position = {int(key): pos for pos, key in enumerate(keys.tolist())}
        self._selector = None


def _search_parameters(index: faiss.Index, config: IndexConfig, selector: faiss.IDSelector, k: int = 0,
                       share: float = 1.0) -> faiss.SearchParameters:
    """Per-search settings for ``index`` restricted to ``selector`` (admitting ``share`` of its entries):
    efSearch for HNSW, nprobe for IVF, and for a refine stage ``refine_k_factor`` with its base index's
    settings inside."""
    if isinstance(index, faiss.IndexRefine):
        return faiss.IndexRefineSearchParameters(
            k_factor=config.refine_k_factor,
            base_index_params=_search_parameters(_base(index), config, selector, k, share))
    if isinstance(index, faiss.IndexHNSW):
        # The walk keeps only the admitted share of the nodes it meets: widen the beam by 1 / share so about
        # as many admitted candidates stay in it as an unfiltered search keeps (else recall falls with share).
        return faiss.SearchParametersHNSW(sel=selector, efSearch=math.ceil(max(config.ef_search, k) / share))
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=config.nprobe)
    return faiss.SearchParameters(sel=selector)


def _base(index: faiss.Index) -> faiss.Index:
    """The index that finds candidates: a refine stage's base index, else ``index`` itself."""
    return faiss.downcast_index(index.base_index) if isinstance(index, faiss.IndexRefine) else index


def _empty(rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = max(int(k), 0)
    return np.zeros((rows, k), dtype=np.float32), np.full((rows, k), -1, dtype=np.int64)
