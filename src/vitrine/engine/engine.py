"""The search engine: a store's catalog, embedder and vector index behind one front door."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.catalog import Filter, ImageInput, Product, Store, filter_document
from vitrine.catalog.sqlite import UpsertCounts
from vitrine.config import Config, write_atomic
from vitrine.embedding import Embedder, EnsembleEmbedder, Query, TrainedEmbedder
from vitrine.embedding.prototypes import HEAD_FILE
from vitrine.embedding.trained import load_trained_products
from vitrine.encoders import FeatureCache
from vitrine.engine.factory import build_embedder
from vitrine.engine.prototype_channel import CHANNELS, PrototypeChannel, TowerBlock
from vitrine.engine.querybank import BANK_FILE, QueryBank, checked_k
from vitrine.governance.saliency import SaliencyModel, crop
from vitrine.errors import ProductExistsError, StoreError, UnknownProductError, VitrineError
from vitrine.engine.entries import Entry, entries_of
from vitrine.engine.modifiers import checked_modifiers, modifier_bonus
from vitrine.engine.remote import StoreEmbedderFactory
from vitrine.index import (FUSIONS, LexicalIndex, VectorIndex, create_index, fuse_channels, group_by_product,
                           load_index, product_keys)
from vitrine.index.entries import SLOT_BITS
from vitrine.parallel import map_batches
from vitrine.progress import progress_bar
from vitrine.rerank import Candidate, Reranker, RerankQuery, product_table

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
    """Products whose index entries were brought up to date (new or changed)."""
    removed: int
    total: int
    embedded: int = 0
    """Entries actually re-embedded: fewer than ``added`` when only attributes or one image changed."""


@dataclass(frozen=True)
class SearchOptions:
    """What shapes one search beyond the query itself (see ``SearchEngine.search``)."""

    filter: str | None = None
    weights: dict[str, float] | None = None
    modifiers: dict[str, float] | None = None
    juice_query: bool | None = None
    """Crop query photos to their salient region first (None: ``search.juice_query``)."""


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
                 indexed_versions: dict[int, int], lexical: LexicalIndex | None = None,
                 fingerprints: dict[int, int] | None = None) -> None:
        self.store = store
        self.config = config
        self.embedder = embedder
        self.index = index
        self.lexical = lexical or LexicalIndex()
        self._indexed_versions = indexed_versions
        self._fingerprints: dict[int, int] = fingerprints or {}
        """Entry id → fingerprint of the content its vector was embedded from."""
        self.stale: str | None = None
        """Why the index cannot answer queries from this embedder (cleared by ``sync(rebuild=True)``)."""
        # Two locks, so that searches never wait for a writer's model work: writers take ``_write_lock``
        # for a whole write (commit, embed, add, save) and so run one at a time; ``_index_lock`` guards
        # the index structures themselves and is held only for the moments of searching or changing them.
        self._write_lock = threading.RLock()
        self._index_lock = threading.RLock()
        self._unsaved = 0
        self._reranker: Reranker | None = None
        self._prototypes: PrototypeChannel | None = None
        self._saliency: SaliencyModel | None = None
        self._querybank: QueryBank | None = None
        self._querybank_read = False

    @property
    def catalog(self):
        return self.store.catalog

    # --- searching ---------------------------------------------------------------------------

    def search(self, text: str | None = None, image: ImageInput | None = None, k: int | None = None,
               *, lexical: bool | None = None, rerank: str | None = None, candidates: int | None = None,
               filter: str | None = None, weights: dict[str, float] | None = None,
               modifiers: dict[str, float] | None = None, channel: str | None = None,
               juice_query: bool | None = None) -> list[Hit]:
        """The ``k`` best products for a text query, a photo, or both.

        ``filter`` (``category == "Fruit" and price < 20``, see ``vitrine.catalog.filters``) restricts
        the vector search itself, so a selective filter still returns ``k`` products when that many match.
        ``weights`` (``{"text": 0.7, "image": 0.3, "lexical": 1.0}``) weigh the text and photo halves of a
        query with both, and the BM25 channel in fusion. ``modifiers`` (``{"popularity": 0.05,
        "price": -0.02}``) add ``Σ w·log1p(x)`` of numeric attributes to the score (``vitrine.engine.modifiers``).
        With ``index.entries = "image"`` results are grouped so each product appears once, at its best image.
        ``channel`` (default ``search.channel``): ``"vector"`` ranks products by their embeddings;
        ``"prototype"`` is ID recognition with the trained prototype head (query -> nearest prototypes ->
        their products, merged by score with the vector hits); scores are then cosines to prototypes.

        ``lexical`` fuses BM25 over titles and descriptions with the vector results (``search.fusion``:
        reciprocal rank fusion, or convex fusion of normalised scores; scores are then the fusion's); it
        defaults to ``search.lexical`` in the store's config.
        ``rerank`` (``"hybrid"``, ``"listwise"``, ``"pointwise"``, ``"sliding"``; None = off) retrieves
        ``candidates`` (default ``rerank.candidates``, 50) and lets the store's trained reranker
        (``models/<rerank.model>``) order them; scores are then the strategy's (r for ``hybrid``).
        ``juice_query`` crops a photo to its salient region before encoding (DataJuicer's vision branch,
        against clutter around the product); it defaults to ``search.juice_query``.
        """
        options = SearchOptions(filter, weights, modifiers, juice_query)
        return self.search_many([Query(text=text, image=image)], k=k, lexical=lexical, rerank=rerank,
                                candidates=candidates, options=options,
                                channel=channel)[0]

    def search_timed(self, text: str | None = None, image: ImageInput | None = None, k: int | None = None,
                     *, lexical: bool | None = None, rerank: str | None = None, candidates: int | None = None,
                     options: SearchOptions | None = None, channel: str | None = None) -> TimedHits:
        """``search``, with the seconds spent in each stage (for a service's responses and metrics)."""
        timings: dict[str, float] = {}
        hits = self.search_many([Query(text=text, image=image)], k=k, lexical=lexical, rerank=rerank,
                                candidates=candidates, timings=timings, options=options, channel=channel)[0]
        return TimedHits(hits, timings)

    def search_many(self, queries: Sequence[Query], k: int | None = None, *, lexical: bool | None = None,
                    rerank: str | None = None, candidates: int | None = None, channel: str | None = None,
                    progress: bool = False, timings: dict[str, float] | None = None,
                    options: SearchOptions | None = None) -> list[list[Hit]]:
        """Batched search: queries are encoded together, which is much faster per query.

        ``timings``, if given, receives the seconds spent encoding, retrieving, fetching products
        and reranking.
        """
        k = self._checked_k(k)
        if rerank:
            reranker = self.reranker()  # fail before any encoding if there is none
            k_final, k = k, self._checked_k(max(k, candidates or self.config.rerank.candidates))
        lexical = self.config.search.lexical if lexical is None else lexical
        channel = channel or self.config.search.channel
        if channel not in CHANNELS:
            raise VitrineError(f"unknown search channel {channel!r} (choose from {', '.join(CHANNELS)})")
        if channel == "prototype" and lexical:
            raise VitrineError("the prototype channel does not combine with lexical fusion; search with lexical=False")
        if lexical and self.config.search.fusion not in FUSIONS:
            raise VitrineError(f"unknown search.fusion {self.config.search.fusion!r} "
                               f"(choose from {', '.join(FUSIONS)})")
        prototypes = self.prototype_channel() if channel == "prototype" else None
        for query in queries:
            if query.text and len(query.text) > self.config.search.max_query_chars:
                raise VitrineError(f"query text is {len(query.text)} characters; the limit is "
                                   f"{self.config.search.max_query_chars}")
        if not queries:
            return []
        options = options or SearchOptions()
        weights = _checked_weights(options.weights)
        modifiers = checked_modifiers(options.modifiers)
        clock = _Stopwatch(timings)
        allowed, where = self._restriction(options.filter, lexical)
        if options.filter:
            clock.lap("filter")
        if self.config.search.juice_query if options.juice_query is None else options.juice_query:
            queries = self._juiced(queries)
            clock.lap("juice")
        vectors = self._encode_queries(queries, weights, progress)
        clock.lap("encode")
        k_out, k = k, (max(k, self.config.search.modifier_depth) if modifiers else k)
        # A reranker learnt its retrieval-score inputs from lists no query bank had corrected
        # (train-reranker's fold retrievers have no bank): it is handed candidates scored the same way.
        corrected = not rerank
        if prototypes is not None:
            scores, keys = self._vector_search(vectors, k, allowed, where)
            with self._index_lock:
                scores, keys = prototypes.search(vectors, k, scores, keys, self.index.reconstruct)
        elif not lexical:
            scores, keys = self._corrected_search(vectors, k, allowed, where, corrected)
        else:
            depth = max(k, self.config.search.fusion_depth)
            vector_scores, vector_keys = self._corrected_search(vectors, depth, allowed, where, corrected)
            scores, keys = self._fused(queries, vector_scores, vector_keys, k, depth, allowed,
                                       weights.get("lexical", 1.0))
        clock.lap("retrieve")
        hits = self._hits(scores, keys)
        clock.lap("fetch")
        if modifiers:
            hits = [_modified(row, modifiers, k_out) for row in hits]
        if rerank:
            hits = self._reranked(reranker, queries, vectors, hits, rerank, k_final)
            clock.lap("rerank")
        return hits

    def channels(self) -> list[str]:
        """The search channels this store can serve: ``vector``, and ``prototype`` once every served model
        has a prototype head."""
        trained = self.config.embedding.kind == "trained"
        heads = [self.store.models_dir / name / HEAD_FILE for name in self.config.embedding.models()]
        return [*CHANNELS] if trained and all(head.is_file() for head in heads) else ["vector"]

    def trained_products(self) -> set[str] | None:
        """The products the served towers were trained with (any of them, when several models are served), or None
        for zero-shot embeddings or a model saved without its list. Products outside it were never trained on."""
        if self.config.embedding.kind != "trained":
            return None
        lists = [load_trained_products(self.store.models_dir / name) for name in self.config.embedding.models()]
        return None if any(ids is None for ids in lists) else set().union(*lists)

    def prototype_channel(self) -> PrototypeChannel:
        """ID recognition with the served models' prototype heads (``models/<embedding.model>`` and any
        ``embedding.also``, which must share one prototype library)."""
        if self._prototypes is None:
            if self.config.embedding.kind != "trained":
                raise StoreError("the prototype channel needs trained embeddings (embedding.kind=trained)")
            folders = [self.store.models_dir / name for name in self.config.embedding.models()]
            self._prototypes = PrototypeChannel.load(folders, tower_blocks(self.embedder), self.catalog.key_of)
        return self._prototypes

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
            reranker.serve_with(self.config.rerank.runtime, self.config.rerank.threads)
            self._reranker = reranker.bind(reranker.builder(product_table(self.store, self.embedder), self.lexical))
        return self._reranker

    def _reranked(self, reranker: Reranker, queries: Sequence[Query], vectors: np.ndarray,
                  hits: list[list[Hit]], strategy: str, k: int) -> list[list[Hit]]:
        asked = [RerankQuery(q.text, q.image, vector) for q, vector in zip(queries, vectors)]
        found = [[Candidate(hit.product_key, hit.score, hit.product) for hit in row] for row in hits]
        ranked = reranker.rank_many(asked, found, strategy)
        return [[Hit(r.rank, r.score, r.candidate.product, r.candidate.key) for r in row[:k]] for row in ranked]

    def search_vectors(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[Hit]]:
        return self._hits(*self._vector_search(vectors, k, allowed))

    def _encode_queries(self, queries: Sequence[Query], weights: dict[str, float], progress: bool) -> np.ndarray:
        """Query vectors; with ``text``/``image`` weights, a query holding both is the weighted sum of its
        text-only and photo-only vectors (renormalised), so the shopper's emphasis sets the balance."""
        both = [row for row, q in enumerate(queries) if q.text and q.image is not None]
        if not both or not ({"text", "image"} & set(weights)):
            return self.embedder.encode_queries(queries, progress=progress)
        vectors = np.zeros((len(queries), self.embedder.dim), dtype=np.float32)
        rest = sorted(set(range(len(queries))) - set(both))
        if rest:
            vectors[rest] = self.embedder.encode_queries([queries[r] for r in rest], progress=progress)
        halves = self.embedder.encode_queries([Query(text=queries[r].text) for r in both]
                                              + [Query(image=queries[r].image) for r in both])
        mixed = weights.get("text", 1.0) * halves[:len(both)] + weights.get("image", 1.0) * halves[len(both):]
        norms = np.linalg.norm(mixed, axis=1, keepdims=True)
        vectors[both] = np.where(norms > 0, mixed / np.maximum(norms, 1e-12), 0.0)
        return vectors

    def _corrected_search(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None,
                          where: Filter | None, corrected: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``_vector_search`` with the query bank's hubness correction, when the store has one and
        ``corrected``: fetched ``search.querybank_overfetch`` deeper, rescored, cut to ``k``."""
        bank = self.querybank() if corrected else None
        if bank is None:
            return self._vector_search(vectors, k, allowed, where)
        scores, keys = self._vector_search(vectors, k + self.config.search.querybank_overfetch, allowed, where)
        return bank.apply(scores, keys, k)

    # --- the query bank (vitrine.engine.querybank) ------------------------------------------------

    def querybank(self) -> QueryBank | None:
        """The store's query bank, if one was fitted in this embedder's space and ``search.querybank`` is on.
        A bank measured with another embedder (the towers were retrained) is left unused, with a warning."""
        if not self.config.search.querybank:
            return None
        if not self._querybank_read:
            self._querybank_read = True
            path = self.store.index_dir / BANK_FILE
            bank = QueryBank.load(path) if path.is_file() else None
            if bank is not None and bank.embedder != _as_json(self.embedder.describe()):
                log.warning("%s was fitted with another embedder (%s); searches go uncorrected until "
                            "'vitrine querybank' fits it again", path, _name(bank.embedder))
                bank = None
            self._querybank = bank
        return self._querybank

    def fit_querybank(self, queries: Sequence[Query], *, k: int | None = None, progress: bool = False) -> QueryBank:
        """Measure every product's hubness over ``queries`` (past queries, no labels) and keep it in the
        store (``index/querybank.npz``); vector searches apply it from then on (``search.querybank``)."""
        k = checked_k(self.config.search.querybank_k if k is None else k)  # before any encoding
        if not queries:
            raise VitrineError("no queries to fit the query bank with")
        vectors = self._encode_queries(queries, {}, progress)
        depth = min(self.config.search.querybank_depth, max(len(self._held_keys()), 1))
        with self._write_lock:
            bank = QueryBank.fit(vectors, lambda rows, d: self._vector_search(rows, d), self._held_keys(),
                                 depth=depth, k=k, embedder=_as_json(self.embedder.describe()))
            bank.save(self.store.index_dir / BANK_FILE)
            self._querybank, self._querybank_read = bank, True
        return bank

    def _vector_search(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None,
                       where: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` product keys; ``where`` (a filter the index evaluates, see ``_filters_in_index``)
        or else ``allowed`` (product keys from the catalog) filters during the search."""
        with self._index_lock:
            if self.stale:
                raise StoreError(self.stale)
            if where is not None:
                return self.index.search(vectors, k, where=where)
            if self.config.index.entries != "image":
                return self.index.search(vectors, k, allowed)
            return self._grouped_search(vectors, k, allowed)

    def _restriction(self, text: str | None, lexical: bool) -> tuple[np.ndarray | None, Filter | None]:
        """``(allowed, where)`` for a filter: ``where`` if the index evaluates it itself (the catalog's
        allowed keys are then needed only to filter BM25 hits), else the catalog's allowed keys."""
        if not text:
            return None, None
        where = Filter.parse(text)
        if not self._filters_in_index():
            return self.catalog.keys_matching(where), None
        return (self.catalog.keys_matching(where) if lexical else None), where

    def _filters_in_index(self) -> bool:
        """Whether filters run inside the index (Milvus with attributes, one entry per product); with
        entries per image the grouping needs the allowed entries, so the catalog evaluates filters."""
        return self.index.holds_attributes and self.config.index.entries == "product"

    def _grouped_search(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Search image entries, then keep each product's best: over-fetch, and fetch deeper for rows
        whose entries covered fewer than ``k`` products while more exist."""
        held = np.fromiter(self._fingerprints.keys(), dtype=np.int64, count=len(self._fingerprints))
        allowed_entries = None if allowed is None else held[np.isin(product_keys(held), allowed)]
        available = len(held) if allowed_entries is None else len(allowed_entries)
        products = len(np.unique(product_keys(held if allowed_entries is None else allowed_entries)))
        fetch = min(max(k * self.config.search.group_overfetch, k), max(available, 1))
        while True:
            scores, ids = self.index.search(vectors, fetch, allowed_entries)
            scores, keys = group_by_product(scores, product_keys(ids), k)
            filled = (keys >= 0).sum(axis=1)
            if fetch >= available or (filled >= min(k, products)).all():
                return scores, keys
            fetch = min(fetch * 4, available)

    def _fused(self, queries: Sequence[Query], vector_scores: np.ndarray, vector_keys: np.ndarray, k: int,
               depth: int, allowed: np.ndarray | None = None, lexical_weight: float = 1.0):
        """The vector ranking fused with BM25 (``search.fusion``) for queries with text; vector order alone
        for photos. A filter drops BM25 hits outside it (after the BM25 search, so that channel may offer fewer)."""
        texts = [query.text or "" for query in queries]
        with self._index_lock:  # BM25 rebuilds its model lazily on the first search after a change
            lexical_scores, lexical_keys = self.lexical.search(texts, depth)
        lexical_keys[[not text for text in texts]] = -1
        if allowed is not None:
            lexical_keys[~np.isin(lexical_keys, allowed)] = -1
        return fuse_channels(self.config.search.fusion, [vector_scores, lexical_scores], [vector_keys, lexical_keys],
                             k, rrf_k=self.config.search.rrf_k, weights=[1.0, lexical_weight])

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
            self.index = create_index(self.embedder.dim, self.config.index, self.store.index_dir)
            self.lexical = LexicalIndex()
            self._indexed_versions, self._fingerprints = {}, {}
            self.stale = None
        wanted = self.catalog.versions()
        held_entries = self.index.ids()
        # Fingerprints describe what the index holds: forget those of entries it lost.
        present = set(held_entries.tolist())
        self._fingerprints = {id_: fp for id_, fp in self._fingerprints.items() if id_ in present}
        held = set(self._keys_of(held_entries).tolist())
        stale_keys = [key for key in held | set(self.lexical.ids().tolist()) if key not in wanted]
        stale_entries = held_entries[np.isin(self._keys_of(held_entries), stale_keys)]
        if len(stale_entries):
            self.index.remove(stale_entries)
        removed = len(set(self._keys_of(stale_entries).tolist()))
        self.lexical.remove(np.array(stale_keys, dtype=np.int64))
        for key in stale_keys:
            self._indexed_versions.pop(key, None)
        for id_ in stale_entries.tolist():
            self._fingerprints.pop(id_, None)
        todo = [key for key, version in wanted.items() if key not in held or self._indexed_versions.get(key) != version]
        # A lost or older lexical file only needs texts back, not new vectors.
        pending = set(todo)
        texts_only = [key for key in wanted if key not in self.lexical and key not in pending]
        self._add_texts(texts_only)
        bar = progress_bar(total=len(todo), enabled=progress and bool(todo), desc="index", unit=" products")
        # Slabs bound memory; within one, batches go to Ray workers (batch.engine=ray) or run here.
        slab = chunk * 16 if self.config.batch.engine == "ray" else chunk
        embedded = 0
        for start in range(0, len(todo), slab):
            products = self.catalog.by_keys(todo[start:start + slab])  # deleted while we worked: left out
            embedded += self._reindex(products, versions={key: wanted[key] for key in products}, chunk=chunk)
            bar.update(min(slab, len(todo) - start))
        bar.close()
        if todo or texts_only or removed or rebuild:
            self.save()
            self._reranker = None  # its product table is refreshed on next use
            self._prototypes = None  # products of prototypes may have come or gone
        return SyncReport(added=len(todo), removed=removed, total=len(self._held_keys()), embedded=embedded)

    def _reindex(self, products: dict[int, Product], versions: dict[int, int], chunk: int = 256) -> int:
        """Bring the entries of ``products`` (key → product) in line with them: embed only entries whose
        content fingerprint changed, drop entries a product no longer has (an image removed). Returns
        how many entries were embedded. The caller holds the write lock."""
        mode = self.config.index.entries
        wanted: list[Entry] = [entry for key, product in products.items() for entry in entries_of(key, product, mode)]
        todo = [entry for entry in wanted if self._fingerprints.get(entry.id) != entry.fingerprint]
        keep = {entry.id for entry in wanted}
        dropped = [id_ for key in products for id_ in self._entries_held_for(key) if id_ not in keep]
        vectors = self._embed([self._resolved(entry.product) for entry in todo], chunk)
        # BM25 rebuilds its whole model after any change: leave it alone when only attributes moved.
        texts = {key: product.text for key, product in products.items()
                 if key not in self.lexical or self.lexical.text(key) != product.text}
        # Entries whose embedding stands may still have new attributes, which an index holding them must get.
        kept = [entry for entry in wanted if self._fingerprints.get(entry.id) == entry.fingerprint]
        with self._index_lock:
            if todo:
                self.index.add(np.array([entry.id for entry in todo], dtype=np.int64), vectors,
                               _documents(todo) if self.index.holds_attributes else None)
            if kept and self.index.holds_attributes:
                self.index.set_documents(np.array([entry.id for entry in kept], dtype=np.int64), _documents(kept))
            if dropped:
                self.index.remove(np.array(dropped, dtype=np.int64))
            if texts:
                self.lexical.add(np.array(list(texts), dtype=np.int64), list(texts.values()))
            for id_ in dropped:
                self._fingerprints.pop(id_, None)
            self._fingerprints.update((entry.id, entry.fingerprint) for entry in todo)
            self._indexed_versions.update(versions)
        return len(todo)

    def _embed(self, products: list[Product], chunk: int) -> np.ndarray:
        """Product vectors, computed here or on Ray Data (``batch.engine``): the same code either way."""
        if not products:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        if self.config.batch.engine == "local":
            return self.embedder.encode_products(products)
        factory = StoreEmbedderFactory(self.store.models_dir, self.config, self.store.manifest.get("embedding"))
        rows = map_batches(products, factory, batch_size=chunk, engine=self.config.batch, desc="embed")
        return np.stack(rows).astype(np.float32, copy=False)

    def _keys_of(self, entry_ids: np.ndarray) -> np.ndarray:
        entry_ids = np.asarray(entry_ids, dtype=np.int64)
        return product_keys(entry_ids) if self.config.index.entries == "image" else entry_ids

    def _held_keys(self) -> np.ndarray:
        return np.unique(self._keys_of(self.index.ids()))

    def _entries_held_for(self, key: int) -> list[int]:
        if self.config.index.entries != "image":
            return [key] if key in self._fingerprints else []
        held, slot = [], 0
        while (key << SLOT_BITS | slot) in self._fingerprints:
            held.append(key << SLOT_BITS | slot)
            slot += 1
        return held

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
            changed = {now[product.id][0]: product for product in products
                       if self._indexed_versions.get(now[product.id][0]) != now[product.id][1]
                       or not self._entries_held_for(now[product.id][0])}
            if changed:
                self._reindex(changed, versions={now[p.id][0]: now[p.id][1] for p in changed.values()})
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
            entries = np.array([id_ for key in keys.tolist() for id_ in self._entries_held_for(key)], dtype=np.int64)
            with self._index_lock:
                self.index.remove(entries if self.config.index.entries == "image" else keys)
                self.lexical.remove(keys)
                for key in keys.tolist():
                    self._indexed_versions.pop(key, None)
                for id_ in entries.tolist():
                    self._fingerprints.pop(id_, None)
            self._unsaved += 1
            if save:
                self.save()
        return len(held)

    def index_state(self) -> IndexState:
        """Compare the index with the catalog (a full pass over the catalog's versions)."""
        wanted = self.catalog.versions()
        with self._index_lock:
            held = set(self._held_keys().tolist())
            outdated = sum(1 for key, version in wanted.items()
                           if key in held and self._indexed_versions.get(key) != version)
            indexed = len(held)
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
        entries = np.fromiter(self._fingerprints.keys(), dtype=np.int64, count=len(self._fingerprints))
        fingerprints = np.fromiter(self._fingerprints.values(), dtype=np.int64, count=len(self._fingerprints))
        buffer = io.BytesIO()
        np.savez(buffer, keys=keys, versions=versions, entries=entries, fingerprints=fingerprints)
        write_atomic(self.store.index_dir / VERSIONS_FILE, buffer.getvalue())
        self.store.update_manifest(embedding=self.embedder.describe(), index=self.index.describe(),
                                   catalog={"products": len(self.catalog)})

    def describe(self) -> dict[str, Any]:
        bank = self.querybank()
        return {"store": str(self.store.root), "products": len(self.catalog), "indexed": len(self._held_keys()),
                "embedding": self.embedder.describe(), "index": self.index.describe(),
                "querybank": bank.describe() if bank else None}


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
        index = load_index(store.index_dir, config.index, dim=embedder.dim)
    except StoreError as exc:
        log.warning("%s; the index will be rebuilt from the catalog", exc)
        index = None
    lexical = None
    if index is not None and LexicalIndex.exists(store.index_dir):
        try:
            lexical = LexicalIndex.load(store.index_dir)
        except StoreError as exc:
            log.warning("%s; the lexical index will be rebuilt from the catalog", exc)
    versions, fingerprints = _load_versions(store.index_dir / VERSIONS_FILE) if index is not None else ({}, {})
    engine = SearchEngine(store, config, embedder, index or create_index(embedder.dim, config.index, store.index_dir),
                          versions, lexical, fingerprints)
    if index is not None and (recorded or {}) != embedder.describe():
        engine.stale = (f"the index of {store.root} was built with {_name(recorded)} embeddings but the store now "
                        f"uses {_name(embedder.describe())}; run 'vitrine index {store.root} --reembed'")
    return engine


def _documents(entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """Filter documents of index entries (their products' attributes, id and group)."""
    return [filter_document(entry.product) for entry in entries]


def _as_json(description: dict[str, Any]) -> dict[str, Any]:
    """A description as it reads back from JSON (tuples become lists), so saved and live ones compare equal."""
    return json.loads(json.dumps(description, sort_keys=True))


def _name(description: dict[str, Any] | None) -> str:
    description = description or {}
    if description.get("members"):  # an ensemble: "trained proto x0.5 + zeroshot x0.5"
        return " + ".join(f"{_name(member)} x{member.get('weight', 0):g}" for member in description["members"])
    return f"{description.get('kind', 'unknown')} {description.get('model', '')}".strip()


def _load_versions(path: Path) -> tuple[dict[int, int], dict[int, int]]:
    """``(key → indexed version, entry id → fingerprint)``; the second is empty for stores from before
    fingerprints (their entries are re-embedded once, on their next change)."""
    if not path.is_file():
        return {}, {}
    try:
        with np.load(path) as saved:
            versions = dict(zip(saved["keys"].tolist(), saved["versions"].tolist()))
            fingerprints = (dict(zip(saved["entries"].tolist(), saved["fingerprints"].tolist()))
                            if "entries" in saved.files else {})
            return versions, fingerprints
    except (OSError, ValueError, KeyError):
        return {}, {}  # a lost version map only costs re-embedding; sync will redo it


def _checked_weights(weights: dict[str, float] | None) -> dict[str, float]:
    """Per-query weights: ``text`` and ``image`` (halves of a query with both), ``lexical`` (BM25 in fusion)."""
    out: dict[str, float] = {}
    for name, weight in (weights or {}).items():
        if name not in ("text", "image", "lexical"):
            raise VitrineError(f"unknown weight {name!r}: use text, image or lexical")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 100:
            raise VitrineError(f"weight {name!r} must be a number between 0 and 100, got {weight!r}")
        out[name] = float(weight)
    if out.get("text") == 0 and out.get("image") == 0:
        raise VitrineError("weights text and image cannot both be 0")
    return out


def _modified(hits: list[Hit], modifiers: dict[str, float], k: int) -> list[Hit]:
    """Hits re-scored with ``score + Σ w·log1p(x)`` (``vitrine.engine.modifiers``), best ``k``, re-ranked."""
    scored = sorted(((hit.score + modifier_bonus(hit.product.attributes, modifiers), hit) for hit in hits),
                    key=lambda pair: -pair[0])[:k]
    return [replace(hit, rank=rank, score=float(score)) for rank, (score, hit) in enumerate(scored, start=1)]


def tower_blocks(embedder: Embedder, start: int = 0, scale: float = 1.0) -> list[TowerBlock]:
    """Where each trained model's towers sit in ``embedder``'s vectors, in the order the models are served
    (ensembles nest: the towers beside their zero-shot block, several models side by side)."""
    if isinstance(embedder, EnsembleEmbedder):
        blocks = []
        for member, member_scale in zip(embedder.members, embedder.scales):
            blocks += tower_blocks(member, start, scale * float(member_scale))
            start += member.dim
        return blocks
    return [TowerBlock(start, start + embedder.dim, scale)] if isinstance(embedder, TrainedEmbedder) else []
