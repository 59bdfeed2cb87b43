"""The search engine: a store's catalog, embedder and vector index behind one front door."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.catalog import ImageInput, Product, Store
from vitrine.catalog.sqlite import UpsertCounts
from vitrine.config import Config, write_atomic
from vitrine.embedding import Embedder, Query
from vitrine.encoders import FeatureCache
from vitrine.engine.factory import build_embedder
from vitrine.governance.saliency import SaliencyModel, crop
from vitrine.errors import ProductExistsError, StoreError, UnknownProductError, VitrineError
from vitrine.index import LexicalIndex, VectorIndex, create_index, fuse_batches, load_index
from vitrine.progress import progress_bar
from vitrine.rerank import Candidate, FeatureBuilder, Reranker, RerankQuery, product_table

log = logging.getLogger(__name__)

VERSIONS_FILE = "versions.npz"


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    product: Product
    product_key: int = -1
    """The product's catalog key (its vector id)."""


@dataclass(frozen=True)
class SyncReport:
    added: int
    removed: int
    total: int


@dataclass(frozen=True)
class TimedHits:
    """Results of one search and the seconds each stage took (``encode``, ``retrieve``, ``fetch``)."""

    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexState:
    """How the index compares with the catalog: ``missing`` and ``outdated`` are both 0 when it is current."""

    products: int
    indexed: int
    missing: int
    outdated: int
    unsaved: int

    @property
    def current(self) -> bool:
        return self.missing == 0 and self.outdated == 0 and self.indexed == self.products


class SearchEngine:
    """Search a store by text, photo, or both. Open one with ``vitrine.open(store)``."""

    def __init__(self, store: Store, config: Config, embedder: Embedder, index: VectorIndex,
                 indexed_versions: dict[int, int], lexical: LexicalIndex | None = None) -> None:
        self.store = store
        self.config = config
        self.embedder = embedder
        self.index = index
        self.lexical = lexical or LexicalIndex()
        self._indexed_versions = indexed_versions
        self.stale: str | None = None
        """Why the index cannot answer queries from this embedder (cleared by ``sync(rebuild=True)``)."""
        # Two locks, so that searches never wait for a writer's model work: writers take ``_write_lock``
        # for a whole write (commit, embed, add, save) and so run one at a time; ``_index_lock`` guards
        # the index structures themselves and is held only for the moments of searching or changing them.
        self._write_lock = threading.RLock()
        self._index_lock = threading.RLock()
        self._unsaved = 0
        self._reranker: Reranker | None = None
        self._saliency: SaliencyModel | None = None

    @property
    def catalog(self):
        return self.store.catalog

    # --- searching ---------------------------------------------------------------------------

    def search(self, text: str | None = None, image: ImageInput | None = None, k: int | None = None,
               *, lexical: bool | None = None, rerank: str | None = None, candidates: int | None = None,
               juice_query: bool | None = None) -> list[Hit]:
        """The ``k`` best products for a text query, a photo, or both.

        ``lexical`` fuses BM25 over titles and descriptions with the vector results (reciprocal rank
        fusion; scores are then RRF scores); it defaults to ``search.lexical`` in the store's config.
        ``rerank`` (``"hybrid"``, ``"listwise"``, ``"pointwise"``, ``"sliding"``; None = off) retrieves
        ``candidates`` (default ``rerank.candidates``, 50) and lets the store's trained reranker
        (``models/<rerank.model>``) order them; scores are then the strategy's (r for ``hybrid``).
        ``juice_query`` crops a photo to its salient region before encoding (DataJuicer's vision branch,
        against clutter around the product); it defaults to ``search.juice_query``.
        """
        return self.search_many([Query(text=text, image=image)], k=k, lexical=lexical, rerank=rerank,
                                candidates=candidates, juice_query=juice_query)[0]

    def search_timed(self, text: str | None = None, image: ImageInput | None = None, k: int | None = None,
                     *, lexical: bool | None = None, rerank: str | None = None,
                     candidates: int | None = None, juice_query: bool | None = None) -> TimedHits:
        """``search``, with the seconds spent in each stage (for a service's responses and metrics)."""
        timings: dict[str, float] = {}
        hits = self.search_many([Query(text=text, image=image)], k=k, lexical=lexical, rerank=rerank,
                                candidates=candidates, timings=timings, juice_query=juice_query)[0]
        return TimedHits(hits, timings)

    def search_many(self, queries: Sequence[Query], k: int | None = None, *, lexical: bool | None = None,
                    rerank: str | None = None, candidates: int | None = None,
                    progress: bool = False, timings: dict[str, float] | None = None,
                    juice_query: bool | None = None) -> list[list[Hit]]:
        """Batched search: queries are encoded together, which is much faster per query.

        ``timings``, if given, receives the seconds spent encoding, retrieving, fetching products
        and reranking.
        """
        k = self._checked_k(k)
        if rerank:
            reranker = self.reranker()  # fail before any encoding if there is none
            k_final, k = k, self._checked_k(max(k, candidates or self.config.rerank.candidates))
        lexical = self.config.search.lexical if lexical is None else lexical
        for query in queries:
            if query.text and len(query.text) > self.config.search.max_query_chars:
                raise VitrineError(f"query text is {len(query.text)} characters; the limit is "
                                   f"{self.config.search.max_query_chars}")
        if not queries:
            return []
        clock = _Stopwatch(timings)
        if self.config.search.juice_query if juice_query is None else juice_query:
            queries = self._juiced(queries)
            clock.lap("juice")
        vectors = self.embedder.encode_queries(queries, progress=progress)
        clock.lap("encode")
        if not lexical:
            scores, keys = self._vector_search(vectors, k)
        else:
            depth = max(k, self.config.search.fusion_depth)
            _, vector_keys = self._vector_search(vectors, depth)
            scores, keys = self._fused(queries, vector_keys, k, depth)
        clock.lap("retrieve")
        hits = self._hits(scores, keys)
        clock.lap("fetch")
        if rerank:
            hits = self._reranked(reranker, queries, vectors, hits, rerank, k_final)
            clock.lap("rerank")
        return hits

    def _juiced(self, queries: Sequence[Query]) -> list[Query]:
        """Photos replaced by their salient crops (``vitrine.governance``); texts untouched."""
        if not any(q.image is not None for q in queries):
            return list(queries)
        if self._saliency is None:
            self._saliency = SaliencyModel(self.config.governance)
        return [replace(q, image=crop(q.image, self._saliency.analyse(q.image).box)) if q.image is not None else q
                for q in queries]

    # --- reranking (vitrine.rerank) ------------------------------------------------------------

    def reranker(self) -> Reranker:
        """The store's trained reranker (``models/<rerank.model>``), bound to this engine's features."""
        if self._reranker is None:
            folder = self.store.models_dir / self.config.rerank.model
            if not (folder / "config.json").is_file():
                raise StoreError(f"{folder}: no reranker here; train one with 'vitrine train-reranker {self.store.root}'")
            reranker = Reranker.load(folder)
            if reranker.embedding and reranker.embedding != self.embedder.describe():
                raise StoreError(f"the reranker in {folder} was trained on {_name(reranker.embedding)} embeddings but "
                                 f"the store uses {_name(self.embedder.describe())}; run 'vitrine train-reranker' again")
            self._reranker = reranker.bind(FeatureBuilder(product_table(self.store, self.embedder), self.lexical))
        return self._reranker

    def _reranked(self, reranker: Reranker, queries: Sequence[Query], vectors: np.ndarray,
                  hits: list[list[Hit]], strategy: str, k: int) -> list[list[Hit]]:
        asked = [RerankQuery(q.text, q.image, vector) for q, vector in zip(queries, vectors)]
        found = [[Candidate(hit.product_key, hit.score, hit.product) for hit in row] for row in hits]
        ranked = reranker.rank_many(asked, found, strategy)
        return [[Hit(r.rank, r.score, r.candidate.product, r.candidate.key) for r in row[:k]] for row in ranked]

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        return self._hits(*self._vector_search(vectors, k))

    def _vector_search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._index_lock:
            if self.stale:
                raise StoreError(self.stale)
            return self.index.search(vectors, k)

    def _fused(self, queries: Sequence[Query], vector_keys: np.ndarray, k: int, depth: int):
        """RRF of the vector ranking and BM25 for queries with text; vector order alone for photos."""
        texts = [query.text or "" for query in queries]
        with self._index_lock:  # BM25 rebuilds its model lazily on the first search after a change
            _, lexical_keys = self.lexical.search(texts, depth)
        lexical_keys[[not text for text in texts]] = -1
        return fuse_batches([vector_keys, lexical_keys], k, rrf_k=self.config.search.rrf_k)

    def _hits(self, scores: np.ndarray, keys: np.ndarray) -> list[list[Hit]]:
        products = self.catalog.by_keys(np.unique(keys[keys >= 0]).tolist())
        results = []
        for row_scores, row_keys in zip(scores, keys):
            hits = [(float(score), products[int(key)], int(key)) for score, key in zip(row_scores, row_keys)
                    if key >= 0 and int(key) in products]
            results.append([Hit(rank, score, product, key) for rank, (score, product, key) in enumerate(hits, start=1)])
        return results

    def _checked_k(self, k: int | None) -> int:
        k = self.config.search.k if k is None else int(k)
        if not 1 <= k <= self.config.search.max_k:
            raise VitrineError(f"k must be between 1 and {self.config.search.max_k}, got {k}")
        return k

    # --- keeping the index in line with the catalog ------------------------------------------

    def sync(self, *, rebuild: bool = False, progress: bool = True, chunk: int = 256) -> SyncReport:
        """Embed what the catalog has and the index lacks (new or changed), drop what it no longer has."""
        with self._write_lock, self._index_lock:  # a batch job: searches wait until it is done
            return self._sync(rebuild=rebuild, progress=progress, chunk=chunk)

    def _sync(self, *, rebuild: bool, progress: bool, chunk: int) -> SyncReport:
        if rebuild or self.stale:
            self.index = create_index(self.embedder.dim, self.config.index)
            self.lexical = LexicalIndex()
            self._indexed_versions = {}
            self.stale = None
        wanted = self.catalog.versions()
        held = set(self.index.ids().tolist())
        stale = np.array([key for key in held | set(self.lexical.ids().tolist()) if key not in wanted], dtype=np.int64)
        removed = self.index.remove(stale) if len(stale) else 0
        self.lexical.remove(stale)
        for key in stale.tolist():
            self._indexed_versions.pop(key, None)
        todo = [key for key, version in wanted.items() if key not in held or self._indexed_versions.get(key) != version]
        # A lost or older lexical file only needs texts back, not new vectors.
        pending = set(todo)
        texts_only = [key for key in wanted if key not in self.lexical and key not in pending]
        self._add_texts(texts_only)
        bar = progress_bar(total=len(todo), enabled=progress and bool(todo), desc="index", unit=" products")
        for start in range(0, len(todo), chunk):
            keys = todo[start:start + chunk]
            products = self.catalog.by_keys(keys)
            keys = [key for key in keys if key in products]  # deleted while we worked
            vectors = self.embedder.encode_products([self._resolved(products[key]) for key in keys])
            self.index.add(np.array(keys, dtype=np.int64), vectors)
            self.lexical.add(np.array(keys, dtype=np.int64), [products[key].text for key in keys])
            self._indexed_versions.update((key, wanted[key]) for key in keys)
            bar.update(len(keys))
        bar.close()
        if todo or texts_only or removed or rebuild:
            self.save()
            self._reranker = None  # its product table is refreshed on next use
        return SyncReport(added=len(todo), removed=removed, total=len(self.index))

    def _add_texts(self, keys: list[int]) -> None:
        for start in range(0, len(keys), 1000):
            products = self.catalog.by_keys(keys[start:start + 1000])
            self.lexical.add(np.array(list(products), dtype=np.int64), [p.text for p in products.values()])

    def _resolved(self, product: Product) -> Product:
        return replace(product, images=tuple(str(self.store.resolve(image)) for image in product.images))

    # --- writes, one product at a time as a live shop makes them -----------------------------

    def upsert(self, products: Sequence[Product], *, must_exist: bool = False, must_be_new: bool = False,
               save: bool = True) -> UpsertCounts:
        """Commit ``products`` to the catalog, then embed them and put them in the index at once.

        Image paths must already be store-relative (see ``vitrine.catalog.ingest.store_image_bytes``).
        The catalog commit is the durable step: if the process dies before the index is saved,
        ``sync()`` (run when a store is opened for serving) replays what the index lacks.
        ``save=False`` leaves saving the index files to the caller (a service saves on a debounce).
        """
        ids = [product.id for product in products]
        if len(set(ids)) != len(ids):
            raise VitrineError("the same product id is given twice")
        with self._write_lock:
            if self.stale:
                raise StoreError(self.stale)
            held = self.catalog.versions_of(ids)
            if must_be_new and held:
                raise ProductExistsError(next(iter(held)))
            if must_exist and len(held) < len(ids):
                raise UnknownProductError(next(i for i in ids if i not in held))
            counts = self.catalog.upsert(products)
            self._reranker = None  # its product table is a snapshot of the catalog: rebuild it on next use
            now = self.catalog.versions_of(ids)
            changed = [product for product in products
                       if self._indexed_versions.get(now[product.id][0]) != now[product.id][1]
                       or now[product.id][0] not in self.index]
            if changed:
                keys = np.array([now[product.id][0] for product in changed], dtype=np.int64)
                vectors = self.embedder.encode_products([self._resolved(product) for product in changed])
                with self._index_lock:
                    self.index.add(keys, vectors)
                    self.lexical.add(keys, [product.text for product in changed])
                    self._indexed_versions.update((now[p.id][0], now[p.id][1]) for p in changed)
                self._unsaved += 1
            if save and self._unsaved:
                self.save()
        return counts

    def remove(self, product_ids: Sequence[str], *, save: bool = True) -> int:
        """Delete products from the catalog (committed first) and from the index. Unknown ids raise."""
        with self._write_lock:
            held = self.catalog.versions_of(list(product_ids))
            missing = [product_id for product_id in product_ids if product_id not in held]
            if missing:
                raise UnknownProductError(missing[0])
            for product_id in product_ids:
                self.catalog.delete(product_id)
            self._reranker = None
            keys = np.array([key for key, _ in held.values()], dtype=np.int64)
            with self._index_lock:
                self.index.remove(keys)
                self.lexical.remove(keys)
                for key in keys.tolist():
                    self._indexed_versions.pop(key, None)
            self._unsaved += 1
            if save:
                self.save()
        return len(held)

    def index_state(self) -> IndexState:
        """Compare the index with the catalog (a full pass over the catalog's versions)."""
        wanted = self.catalog.versions()
        with self._index_lock:
            held = set(self.index.ids().tolist())
            outdated = sum(1 for key, version in wanted.items()
                           if key in held and self._indexed_versions.get(key) != version)
            indexed = len(self.index)
        return IndexState(products=len(wanted), indexed=indexed, missing=sum(1 for key in wanted if key not in held),
                          outdated=outdated, unsaved=self._unsaved)

    @property
    def unsaved(self) -> int:
        """Writes since the index files were last saved."""
        return self._unsaved

    def save(self) -> None:
        """Write the index files (each replaced atomically). Searches go on meanwhile; writes wait."""
        with self._write_lock:
            self._unsaved = 0
            self._save()

    def _save(self) -> None:
        self.index.save(self.store.index_dir)
        self.lexical.save(self.store.index_dir)
        keys = np.fromiter(self._indexed_versions.keys(), dtype=np.int64, count=len(self._indexed_versions))
        versions = np.fromiter(self._indexed_versions.values(), dtype=np.int64, count=len(self._indexed_versions))
        buffer = io.BytesIO()
        np.savez(buffer, keys=keys, versions=versions)
        write_atomic(self.store.index_dir / VERSIONS_FILE, buffer.getvalue())
        self.store.update_manifest(embedding=self.embedder.describe(), index=self.index.describe(),
                                   catalog={"products": len(self.catalog)})

    def describe(self) -> dict[str, Any]:
        return {"store": str(self.store.root), "products": len(self.catalog), "indexed": len(self.index),
                "embedding": self.embedder.describe(), "index": self.index.describe()}


class _Stopwatch:
    """Adds the seconds since the last lap to ``timings[stage]``; does nothing without a dict."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.timings is None:
            return
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now


def open(store: str | Path | Store, *, config_overrides: dict[str, Any] | None = None,
         create: bool = False) -> SearchEngine:
    """Open the engine over a store directory (``create=True`` makes an empty store if missing)."""
    if not isinstance(store, Store):
        store = Store.create(Path(store)) if create else Store.open(Path(store))
    config = store.config(config_overrides)
    recorded = store.manifest.get("embedding")
    cache = FeatureCache(store.root / "cache" / "features.sqlite") if config.encoders.cache else None
    embedder = build_embedder(config, store.models_dir, recorded, cache)
    try:
        index = load_index(store.index_dir, config.index)
    except StoreError as exc:
        log.warning("%s; the index will be rebuilt from the catalog", exc)
        index = None
    lexical = None
    if index is not None and LexicalIndex.exists(store.index_dir):
        try:
            lexical = LexicalIndex.load(store.index_dir)
        except StoreError as exc:
            log.warning("%s; the lexical index will be rebuilt from the catalog", exc)
    engine = SearchEngine(store, config, embedder, index or create_index(embedder.dim, config.index),
                          _load_versions(store.index_dir / VERSIONS_FILE) if index is not None else {}, lexical)
    if index is not None and (recorded or {}) != embedder.describe():
        engine.stale = (f"the index of {store.root} was built with {_name(recorded)} embeddings but the store now "
                        f"uses {_name(embedder.describe())}; run 'vitrine index {store.root} --reembed'")
    return engine


def _name(description: dict[str, Any] | None) -> str:
    description = description or {}
    return f"{description.get('kind', 'unknown')} {description.get('model', '')}".strip()


def _load_versions(path: Path) -> dict[int, int]:
    if not path.is_file():
        return {}
    try:
        with np.load(path) as saved:
            return dict(zip(saved["keys"].tolist(), saved["versions"].tolist()))
    except (OSError, ValueError, KeyError):
        return {}  # a lost version map only costs re-embedding; sync will redo it

