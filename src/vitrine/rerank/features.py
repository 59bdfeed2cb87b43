"""What the reranker reads: per-query and per-candidate feature vectors built from what the engine
already computes, so reranking costs no backbone pass.

- query: the fused query vector, and which modalities the query has (text, photo);
- candidate: the fused product vector, its element-wise product with the query vector (where the two
  agree, dimension by dimension), and scalars:
  the retrieval score (raw, standardised within the list, gap to the top), the cosine with the query,
  the retrieval rank, the cosines of the query with the product's *text* and *image* vectors alone,
  whether the product has an image, BM25 (log and relative to the list's best), keyword overlap
  (share of the product's TF-IDF keywords found in the query, see ``vitrine.training.keywords``),
  title overlap (share of query words in the title) and, where the reranker has a ``QueryHistory``, the
  best cosine with the product's past queries (raw and as a gap to the list's best) and their number
  (relative to the history's mean per product, so it means the same with a part of the history);
- between candidates: the cosines of their fused, text-only and image-only vectors (``RELATIONS``), by
  which a relational chunk model biases its attention (how alike two candidates are, and in what:
  listwise evidence that a model scoring one candidate at a time cannot have).

Product vectors come from a ``ProductTable``: every catalog product's fused/text/image vectors and
keywords, computed once per embedder and kept in ``STORE/cache/rerank-products.npz`` (products added or
changed since are encoded on the next open; a new embedder rebuilds it).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrine.catalog.product import Product
from vitrine.config import SearchConfig, write_atomic
from vitrine.embedding import Embedder
from vitrine.index import LexicalIndex
from vitrine.progress import progress_bar
from vitrine.rerank.history import QueryHistory
from vitrine.training.keywords import extract_keywords

log = logging.getLogger(__name__)

SCALARS = ("retrieval", "retrieval_z", "gap_to_top", "cosine", "rank", "cos_text", "cos_image", "has_image",
           "bm25_log", "bm25_share", "keyword_overlap", "title_overlap", "history_cos", "history_gap", "history_count_rel")
RELATIONS = ("fused", "text", "image")
"""The channels of ``CandidateList.similarity``: cosines between two candidates' vectors of each kind."""

RELATION_FORMS = ("cosines", "vectors", "none")
"""How a ``CandidateList`` carries what relates its candidates (``FeatureBuilder.build``)."""

TABLE_FILE = "rerank-products.npz"
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class FeatureSpec:
    """The layout a model was trained on; a table of another width cannot feed it.

    ``vectors``: whether the raw vectors are inputs too (the query vector; per candidate its product
    vector and the element-wise product with the query), or only the scalars that compare the two."""

    dim: int
    scalars: tuple[str, ...] = SCALARS
    vectors: bool = True

    @property
    def query_dim(self) -> int:
        return (self.dim if self.vectors else 0) + 2

    @property
    def item_dim(self) -> int:
        return self.vector_columns + len(self.scalars)

    @property
    def vector_columns(self) -> int:
        return 2 * self.dim if self.vectors else 0

    def column(self, scalar: str) -> int:
        """Where the named scalar sits in an item's feature vector."""
        return self.vector_columns + self.scalars.index(scalar)

    def without_vectors(self) -> "FeatureSpec":
        return FeatureSpec(self.dim, self.scalars, False)


@dataclass
class CandidateList:
    """One query's K candidates as arrays, in retrieval order. ``levels`` only where labels are known."""

    keys: np.ndarray
    query: np.ndarray
    items: np.ndarray
    retrieval: np.ndarray
    levels: np.ndarray | None = None
    ideal: np.ndarray | None = None
    """Gains (3 − level) of every labelled product of the query, best first: the NDCG ideal and the
    number of instance matches G, which reach beyond the K candidates."""
    text: str | None = None
    labelled: np.ndarray | None = None
    """Which candidates the labels actually judge (the others are taken as irrelevant)."""
    spec: FeatureSpec | None = None
    """The layout of ``query`` and ``items`` (set by ``FeatureBuilder``)."""
    similarity: np.ndarray | None = None
    """``(K, K, len(RELATIONS))`` cosines between the candidates' fused, text and image vectors: what a
    relational chunk model (``ModelConfig.relational``) biases its attention with. ``None`` reads as zeros."""
    relation_vectors: np.ndarray | None = None
    """``(len(RELATIONS), K, D)`` the candidates' unit vectors of each kind, from which the chunk model computes
    the cosines within each chunk itself, in its graph (what serving hands it: 0.05 ms less per query than
    computing and stacking the cosines outside); ``similarity`` is the form training keeps (K × K beats K × D
    in memory)."""

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class ProductTable:
    """Every catalog product's vectors (fused, text alone, image alone) and keywords, by catalog key."""

    keys: np.ndarray
    versions: np.ndarray
    fused: np.ndarray
    text: np.ndarray
    image: np.ndarray
    has_image: np.ndarray
    ids: list[str]
    titles: list[str]
    keywords: list[list[str]]
    embedding: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._row = {int(key): row for row, key in enumerate(self.keys.tolist())}
        # The three kinds live in one (kinds, N, D) array, in ``RELATIONS`` order, with ``fused``, ``text`` and
        # ``image`` views into it: a list's vectors of every kind come out of one gather, already laid out as
        # the cosines between candidates (``relations_of``) read them. ``build`` and ``load`` hand in such
        # views already (``stacked_kinds``), so a large table is never held twice.
        given = [getattr(self, kind) for kind in RELATIONS]
        base = given[0].base
        stacked = (isinstance(base, np.ndarray) and base.dtype == np.float32
                   and base.shape == (len(RELATIONS), *given[0].shape)
                   and all(vectors.base is base and vectors.ctypes.data == base[index].ctypes.data
                           for index, vectors in enumerate(given)))
        self.kinds = base if stacked else np.stack(given).astype(np.float32, copy=False)
        for kind, vectors in zip(RELATIONS, self.kinds):
            setattr(self, kind, vectors)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.kinds.shape[2])

    def rows(self, keys: Sequence[int]) -> np.ndarray:
        """Table rows of ``keys``; a key the table lacks is an error (refresh the table first)."""
        return np.array([self._row[int(key)] for key in keys], dtype=np.int64)

    def __contains__(self, key: object) -> bool:
        return int(key) in self._row  # type: ignore[arg-type]

    @classmethod
    def build(cls, entries: Sequence[tuple[int, int, Product]], embedder: Embedder, *,
              previous: "ProductTable | None" = None, batch_size: int = 256, progress: bool = False) -> "ProductTable":
        """A table over ``(key, version, product)`` entries (image paths readable from here). Rows of
        ``previous`` with the same key, version and embedder are reused instead of encoded again."""
        description = embedder.describe()
        reusable = previous is not None and previous.embedding == description
        keys = np.array([key for key, _, _ in entries], dtype=np.int64)
        versions = np.array([version for _, version, _ in entries], dtype=np.int64)
        n = len(entries)
        views = stacked_kinds(n, embedder.dim)
        fused, text, image = views["fused"], views["text"], views["image"]
        todo = []
        for row, (key, version, _) in enumerate(entries):
            if reusable and key in previous and previous.versions[previous._row[key]] == version:
                old = previous._row[key]
                fused[row], text[row], image[row] = previous.fused[old], previous.text[old], previous.image[old]
            else:
                todo.append(row)
        bar = progress_bar(total=len(todo), enabled=progress and bool(todo), desc="rerank features", unit=" products")
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            parts = embedder.encode_product_parts([entries[row][2] for row in rows])
            fused[rows] = parts["fused"]
            # An embedder without modality parts gives the fused vector for both: the cosines then agree.
            text[rows] = parts.get("text", parts["fused"])
            image[rows] = parts.get("image", parts["fused"])
            bar.update(len(rows))
        bar.close()
        products = [product for _, _, product in entries]
        has_image = np.array([bool(p.images) for p in products], dtype=bool)
        image[~has_image] = 0.0
        return cls(keys, versions, fused, text, image, has_image, [p.id for p in products], [p.title for p in products],
                   extract_keywords([p.text for p in products]) if products else [], description)

    def save(self, path: Path) -> None:
        import io

        buffer = io.BytesIO()
        meta = {"embedding": self.embedding, "ids": self.ids, "titles": self.titles, "keywords": self.keywords}
        np.savez(buffer, keys=self.keys, versions=self.versions, fused=self.fused, text=self.text, image=self.image,
                 has_image=self.has_image, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "ProductTable | None":
        """The saved table, or ``None`` if it is missing or unreadable (it is only a cache)."""
        try:
            with np.load(path) as saved:
                meta = json.loads(saved["meta"].tobytes().decode())
                views = stacked_kinds(*saved["fused"].shape)
                for kind in RELATIONS:  # one kind in memory at a time besides the table
                    views[kind][:] = saved[kind]
                return cls(saved["keys"], saved["versions"], views["fused"], views["text"], views["image"],
                           saved["has_image"], meta["ids"], meta["titles"], meta["keywords"], meta["embedding"])
        except (OSError, ValueError, KeyError):
            return None


def stacked_kinds(count: int, dim: int) -> dict[str, np.ndarray]:
    """Zeroed ``(count, dim)`` arrays, one per kind of vector, as views into one ``(kinds, count, dim)`` array
    in ``RELATIONS`` order: what ``ProductTable`` keeps without copying."""
    stacked = np.zeros((len(RELATIONS), count, dim), dtype=np.float32)
    return {kind: stacked[index] for index, kind in enumerate(RELATIONS)}


def words(text: str | None) -> set[str]:
    return {word.lower() for word in _WORD.findall(text or "")}


class FeatureBuilder:
    """Builds ``CandidateList``s from query vectors and retrieved keys, reading the product table,
    (for queries with text) the lexical index and, if given, the query history."""

    def __init__(self, table: ProductTable, lexical: LexicalIndex | None = None,
                 history: QueryHistory | None = None, vectors: bool = True) -> None:
        self.table = table
        self.lexical = lexical
        self.history = history or QueryHistory(np.zeros((0, table.dim), np.float32), np.zeros(0, np.int64), [])
        self.spec = FeatureSpec(table.dim, vectors=vectors)
        self._keyword_words = [set().union(*(words(k) for k in kws)) if kws else set() for kws in table.keywords]
        self._title_words = [words(title) for title in table.titles]

    def build(self, query_vector: np.ndarray, query_text: str | None, query_has_image: bool,
              keys: Sequence[int], retrieval: Sequence[float], levels: np.ndarray | None = None,
              ideal: np.ndarray | None = None, exclude: str | None = None,
              relations: str = "cosines") -> CandidateList:
        """``exclude``: the key of the query itself, whose rows of the history it must not see. ``relations``:
        how the list carries what relates its candidates (``RELATION_FORMS``): ``cosines`` between every pair
        (``similarity``; for training), the candidates' ``vectors`` (``relation_vectors``; serving: the chunk
        model computes the cosines it reads), or ``none`` (for strategies that never read them)."""
        if relations not in RELATION_FORMS:
            raise ValueError(f"relations must be one of {', '.join(RELATION_FORMS)}, got {relations!r}")
        keys = np.asarray(keys, dtype=np.int64)
        retrieval = np.asarray(retrieval, dtype=np.float32)
        q = np.asarray(query_vector, dtype=np.float32)
        rows = self.table.rows(keys)
        kinds = self.table.kinds[:, rows]
        fused, text, image = (kinds[RELATIONS.index(kind)] for kind in ("fused", "text", "image"))
        k = len(keys)
        cosine = fused @ q
        spread = retrieval.std() if k > 1 else 0.0
        bm25 = (self.lexical.scores_of(query_text, keys) if self.lexical is not None and query_text
                else np.zeros(k, dtype=np.float32))
        query_words = words(query_text)
        keyword_overlap = np.array([len(query_words & self._keyword_words[r]) / len(self._keyword_words[r])
                                    if self._keyword_words[r] else 0.0 for r in rows.tolist()], dtype=np.float32)
        title_overlap = np.array([len(query_words & self._title_words[r]) / len(query_words) if query_words else 0.0
                                  for r in rows.tolist()], dtype=np.float32)
        history_cos, history_count = self.history.evidence(q, keys, exclude)
        scalars = np.stack([
            retrieval,
            (retrieval - retrieval.mean()) / (spread + 1e-6) if k else retrieval,
            retrieval - (retrieval.max() if k else 0.0),
            cosine,
            np.arange(k, dtype=np.float32) / max(k, 1),
            text @ q,
            image @ q,
            self.table.has_image[rows].astype(np.float32),
            np.log1p(bm25),
            bm25 / bm25.max() if k and bm25.max() > 0 else bm25,
            keyword_overlap,
            title_overlap,
            history_cos,
            history_cos - (history_cos.max() if k else 0.0),
            # Against the history's own scale: a reranker learns from lists whose history is a part of the
            # training queries (the other cross-fitting folds), and serves with all of them.
            np.log1p(history_count / max(self.history.mean_count, 1.0)),
        ], axis=1).astype(np.float32) if k else np.zeros((0, len(SCALARS)), dtype=np.float32)
        modalities = np.array([float(bool(query_text)), float(query_has_image)], dtype=np.float32)
        if self.spec.vectors:
            items = np.concatenate([fused, fused * q[None, :], scalars], axis=1).astype(np.float32)
            query = np.concatenate([q, modalities]).astype(np.float32)
        else:
            items, query = scalars, modalities
        return CandidateList(keys, query, items, retrieval, levels, ideal, query_text, spec=self.spec,
                             similarity=relations_of(kinds) if relations == "cosines" else None,
                             relation_vectors=kinds if relations == "vectors" else None)


def relations_of(kinds: np.ndarray) -> np.ndarray:
    """``(K, K, R)``: the cosines between K candidates, per kind of vector (``kinds`` is ``(R, K, D)``, the
    candidates' unit vectors of each kind in ``RELATIONS``)."""
    # Through torch, as the history's cosines: numpy's BLAS threads would fight torch's over the cores.
    grouped = torch.from_numpy(np.ascontiguousarray(kinds, dtype=np.float32))
    return (grouped @ grouped.transpose(1, 2)).permute(1, 2, 0).contiguous().numpy()


def retrieve(table: ProductTable, vectors: np.ndarray, k: int, *, texts: Sequence[str | None] | None = None,
             lexical: LexicalIndex | None = None, rrf_k: int = 60, depth: int = 100,
             fusion: str = SearchConfig.fusion) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` over the table (what the engine's index returns, without touching it), fused with
    BM25 (``fusion``, as ``search.fusion``) for queries with text when ``lexical`` is given. Used to build
    training lists from any embedder, including ones whose vectors are not in the store's index. Returns
    ``(scores, keys)``."""
    from vitrine.index import fuse_channels

    scores = vectors @ table.fused.T
    width = min(max(k, depth if lexical is not None else k), len(table))
    top = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    keys = table.keys[top]
    top_scores = np.take_along_axis(scores, top, axis=1)
    if lexical is None or texts is None:
        return top_scores[:, :k].astype(np.float32), keys[:, :k]
    lexical_scores, lexical_keys = lexical.search([t or "" for t in texts], width)
    lexical_keys[[not t for t in texts]] = -1
    return fuse_channels(fusion, [top_scores, lexical_scores], [keys, lexical_keys], k, rrf_k=rrf_k)


def product_table(store, embedder: Embedder, *, progress: bool = False) -> ProductTable:
    """The store's product table for ``embedder``, brought up to date with the catalog and saved in
    ``STORE/cache``: only products new or changed since the last build are encoded."""
    path = store.root / "cache" / TABLE_FILE
    previous = ProductTable.load(path) if path.is_file() else None
    versions = store.catalog.versions()
    if (previous is not None and previous.embedding == embedder.describe() and len(previous) == len(versions)
            and all(versions.get(int(k)) == int(v) for k, v in zip(previous.keys.tolist(), previous.versions.tolist()))):
        return previous
    table = ProductTable.build(catalog_entries(store), embedder, previous=previous, progress=progress)
    table.save(path)
    return table


def catalog_entries(store) -> list[tuple[int, int, Product]]:
    """``(key, version, product)`` for every catalog product, image paths resolved inside the store."""
    from dataclasses import replace

    versions = store.catalog.versions()
    products = store.catalog.by_keys(sorted(versions))
    return [(key, versions[key], replace(products[key], images=tuple(str(store.resolve(i)) for i in products[key].images)))
            for key in sorted(products)]
