"""Zero-shot product vectors from frozen, unaligned backbones.

The image backbone (EfficientNet, ImageNet) and the text backbone (MiniLM) do not share a space,
so we do not pretend they do. A product vector is the concatenation of its two blocks::

    product = [ sqrt(w) * image,  sqrt(1 - w) * text ]     (unit length when both exist)
    photo query = [ image, 0 ]        text query = [ 0, text ]
    photo + text = [ sqrt(w) * image, sqrt(1 - w) * text ]

so a photo query ranks products by image similarity alone, a text query by text similarity alone,
and a query with both by the weighted sum of the two cosines. A product without an image keeps a
zero image block (its text block is not inflated), so scores stay comparable across products.
Trained towers (``vitrine.embedding`` after training) replace this with one learned space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from vitrine.catalog.product import Product
from vitrine.embedding.base import Embedder, Query, product_image_features
from vitrine.encoders.base import ImageEncoder, TextEncoder, l2_normalize


class ZeroShotEmbedder(Embedder):
    """Block fusion of a text and an image backbone. Backbones load on first use."""

    kind = "zeroshot"

    def __init__(self, text_encoder: Callable[[], TextEncoder], image_encoder: Callable[[], ImageEncoder],
                 *, text_dim: int, image_dim: int, image_weight: float = 0.5, batch_size: int = 32) -> None:
        if not 0.0 <= image_weight <= 1.0:
            raise ValueError(f"image_weight must be within [0, 1], got {image_weight}")
        self._load_text, self._load_image = text_encoder, image_encoder
        self.text_dim, self.image_dim = text_dim, image_dim
        self.dim = image_dim + text_dim
        self.image_weight = image_weight
        self.batch_size = batch_size

    @cached_property
    def text_encoder(self) -> TextEncoder:
        return self._checked(self._load_text(), self.text_dim)

    @cached_property
    def image_encoder(self) -> ImageEncoder:
        return self._checked(self._load_image(), self.image_dim)

    def encode_products(self, products: Sequence[Product], *, progress: bool = False) -> np.ndarray:
        texts = self.text_encoder.encode([p.text for p in products], batch_size=self.batch_size, progress=progress)
        images, _ = product_image_features(
            products, lambda paths: self.image_encoder.encode(paths, batch_size=self.batch_size, progress=progress),
            self.image_dim)
        return self._fuse(images, texts, np.sqrt(self.image_weight), np.sqrt(1.0 - self.image_weight))

    def encode_queries(self, queries: Sequence[Query], *, progress: bool = False) -> np.ndarray:
        text_rows = [row for row, query in enumerate(queries) if query.text]
        image_rows = [row for row, query in enumerate(queries) if query.image is not None]
        texts = np.zeros((len(queries), self.text_dim), dtype=np.float32)
        images = np.zeros((len(queries), self.image_dim), dtype=np.float32)
        if text_rows:
            texts[text_rows] = self.text_encoder.encode([queries[r].text for r in text_rows],
                                                        batch_size=self.batch_size, progress=progress)
        if image_rows:
            images[image_rows] = self.image_encoder.encode([queries[r].image for r in image_rows],
                                                           batch_size=self.batch_size, progress=progress)
        both = np.zeros(len(queries), dtype=bool)
        both[list(set(text_rows) & set(image_rows))] = True
        image_scale = np.where(both, np.sqrt(self.image_weight), 1.0)[:, None]
        text_scale = np.where(both, np.sqrt(1.0 - self.image_weight), 1.0)[:, None]
        return self._fuse(images, texts, image_scale, text_scale)

    def encode_product_parts(self, products: Sequence[Product], *, progress: bool = False) -> dict[str, np.ndarray]:
        # The blocks of the fused vector already are the modalities: keep each alone, renormalised.
        fused = self.encode_products(products, progress=progress)
        image, text = fused.copy(), fused.copy()
        image[:, self.image_dim:] = 0.0
        text[:, :self.image_dim] = 0.0
        return {"fused": fused, "text": l2_normalize(text), "image": l2_normalize(image)}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim, "fusion": "concat[image, text]",
                "image_weight": self.image_weight, "image_dim": self.image_dim, "text_dim": self.text_dim,
                "photo_query": "image block only", "text_query": "text block only"}

    @staticmethod
    def _fuse(images: np.ndarray, texts: np.ndarray, image_scale: Any, text_scale: Any) -> np.ndarray:
        return np.ascontiguousarray(np.hstack([images * image_scale, texts * text_scale]), dtype=np.float32)

    @staticmethod
    def _checked(encoder: Any, dim: int) -> Any:
        if encoder.dim != dim:
            raise ValueError(f"encoder {encoder.name} gives {encoder.dim}-d vectors, the store expects {dim}-d")
        return encoder
