"""Turning products and pairs into a training set of cached backbone features."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from vitrine.catalog.product import Pair, Product
from vitrine.config import TrainingConfig
from vitrine.embedding.base import product_image_features
from vitrine.encoders import ImageEncoder, TextEncoder
from vitrine.encoders.ngrams import NgramHasher
from vitrine.errors import VitrineError
from vitrine.encoders.cache import FeatureCache
from vitrine.training.keywords import extract_keywords, keyword_queries
from vitrine.training.masks import equivalence_matrix
from vitrine.training.views import CropViews, ViewImages

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """Everything a step needs, as arrays: products (the keys) and examples (the queries)."""

    product_ids: list[str]
    product_text: np.ndarray
    product_image: np.ndarray
    product_has_image: np.ndarray
    equivalent: sp.csr_matrix
    """``(n, n)``: products that are not negatives of each other (same item, same group, keyword twins)."""
    query_text: np.ndarray
    query_image: np.ndarray
    query_has_text: np.ndarray
    query_has_image: np.ndarray
    positive: np.ndarray
    """Product row each example should find."""
    weight: np.ndarray
    relevant: list[np.ndarray]
    """Per example, the other product rows graded relevant to the same query (masked as negatives)."""
    query_keys: list[str]
    """Which query each example comes from (examples of one query stay on one side of a dev split)."""
    keyword_examples: int = 0
    product_ngrams: sp.csr_matrix | None = None
    query_ngrams: sp.csr_matrix | None = None
    """Hashed n-gram bags of the product texts and the query texts, when the model has an n-gram embedding."""
    ngram_idf: np.ndarray | None = None
    """The bags' inverse document frequencies over the product texts, when the model weights n-grams by them."""
    query_image_views: np.ndarray | None = None
    """``(views, examples, image dim)``: features of other views of each example's photo (zeros for examples
    without one), when training shows photos as crops too (``TrainingConfig.image_views``)."""
    query_text_rows: np.ndarray | None = None
    """The row of ``query_text`` holding each example's text features (row 0 is zeros, for examples without
    text); None means row ``i`` is example ``i``. Examples sharing a text share a row: Shopee's 96,900
    title pairs use 17,775 titles, and token states for a trainable text top are 18,480 floats a text."""

    def __len__(self) -> int:
        return len(self.positive)

    def query_text_index(self) -> np.ndarray:
        """The row of ``query_text`` of every example."""
        return self.query_text_rows if self.query_text_rows is not None else np.arange(len(self.positive))

    def query_text_of(self, examples: np.ndarray) -> np.ndarray:
        """Text features of the given examples."""
        return self.query_text[self.query_text_index()[examples]]


def build_training_set(products: Sequence[Product], pairs: Sequence[Pair], text_encoder: TextEncoder,
                       image_encoder: ImageEncoder, cache: FeatureCache, config: TrainingConfig,
                       *, ngrams: NgramHasher | None = None, ngram_idf: bool = False,
                       progress: bool = True) -> TrainingSet:
    """Products must have readable image paths. Pairs naming unknown products are an error.
    With an ``ngrams`` hasher the set also holds the texts' n-gram bags (IDF-weighted over the product
    texts with ``ngram_idf``)."""
    rows = {product.id: row for row, product in enumerate(products)}
    unknown = sorted({pair.product_id for pair in pairs} - set(rows))
    if unknown:
        raise VitrineError(f"training pairs name product ids the catalog does not hold ({len(unknown)} ids; "
                           f"first: {unknown[0]!r}); ingest the products first")
    positives = [pair for pair in pairs if pair.grade >= config.min_positive_grade]
    if not positives:
        raise VitrineError("no training pairs with a grade at or above training.min_positive_grade")

    product_text = cache.texts(text_encoder, [p.text for p in products], progress=progress)
    product_image, has_image = product_image_features(
        products, lambda paths: cache.images(image_encoder, paths, progress=progress), image_encoder.dim,
        normalize=image_encoder.normalized)
    keywords = extract_keywords([p.text for p in products]) if (config.keyword_pairs or config.keyword_mask <= 1) else None
    equivalent = equivalence_matrix([p.group for p in products], keywords, config.keyword_mask)

    texts, images, positive, weight, keys = [], [], [], [], []
    for pair in positives:
        texts.append(pair.query_text)
        images.append(pair.query_image)
        positive.append(rows[pair.product_id])
        weight.append(pair.grade / 3.0)
        keys.append(pair.query_key)
    keyword_examples = 0
    if config.keyword_pairs and keywords is not None:
        for row, words in enumerate(keywords):
            for query in keyword_queries(words):
                texts.append(query)
                images.append(None)
                positive.append(row)
                weight.append(config.keyword_weight)
                keys.append(f"keyword:{query}")
                keyword_examples += 1

    has_text = np.array([bool(t) for t in texts])
    has_img = np.array([i is not None for i in images])
    unique_texts = list(dict.fromkeys(t for t in texts if t))
    text_rows = {text: row for row, text in enumerate(unique_texts, start=1)}
    query_text = np.zeros((len(unique_texts) + 1, text_encoder.dim), dtype=np.float32)
    query_text[1:] = cache.texts(text_encoder, unique_texts, progress=progress)
    query_image = np.zeros((len(texts), image_encoder.dim), dtype=np.float32)
    photos = [i for i in images if i is not None]
    if has_img.any():
        query_image[has_img] = cache.images(image_encoder, photos, progress=progress)
    views = None
    if config.image_views and has_img.any():
        views = np.zeros((config.image_views, len(texts), image_encoder.dim), dtype=np.float32)
        crops = CropViews(config.image_views, seed=config.seed)
        for view in range(crops.count):
            views[view, has_img] = cache.image_variants(
                image_encoder, photos, f"{crops.signature}|{view}",
                lambda paths, view=view: ViewImages(paths, crops, view), progress=progress)

    relevant_by_key: dict[str, set[int]] = defaultdict(set)
    for key, row in zip(keys, positive):
        if key:
            relevant_by_key[key].add(row)
    relevant = [np.array(sorted(relevant_by_key[key] - {row}) if key else [], dtype=np.int64)
                for key, row in zip(keys, positive)]
    idf = ngrams.fit_idf([p.text for p in products]) if ngrams is not None and ngram_idf else None
    log.info("training set: %d products, %d examples (%d keyword queries)", len(products), len(texts), keyword_examples)
    return TrainingSet(
        product_ids=[p.id for p in products], product_text=product_text, product_image=product_image,
        product_has_image=has_image, equivalent=equivalent, query_text=query_text, query_image=query_image,
        query_has_text=has_text, query_has_image=has_img, positive=np.array(positive, dtype=np.int64),
        weight=np.array(weight, dtype=np.float32), relevant=relevant, query_keys=keys,
        keyword_examples=keyword_examples, query_image_views=views,
        product_ngrams=ngrams.transform([p.text for p in products], idf) if ngrams is not None else None,
        query_ngrams=ngrams.transform(texts, idf) if ngrams is not None else None, ngram_idf=idf,
        query_text_rows=np.array([text_rows.get(t, 0) if t else 0 for t in texts], dtype=np.int64))
