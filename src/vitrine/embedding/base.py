"""The embedding seam: products and queries into one vector space."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitrine.catalog.images import ImageInput
from vitrine.catalog.product import Product
from vitrine.errors import VitrineError


@dataclass(frozen=True)
class Query:
    """What a shopper gives: text, a photo, or both."""

    text: str | None = None
    image: ImageInput | None = None

    def __post_init__(self) -> None:
        if not (self.text and self.text.strip()) and self.image is None:
            raise VitrineError("a query needs text, an image, or both")


class Embedder(ABC):
    """Maps products and queries into one space where inner product ranks products."""

    dim: int

    @abstractmethod
    def encode_products(self, products: Sequence[Product], *, progress: bool = False) -> np.ndarray:
        """``(len(products), dim)`` float32. Image paths must be readable from here."""

    @abstractmethod
    def encode_queries(self, queries: Sequence[Query], *, progress: bool = False) -> np.ndarray:
        """``(len(queries), dim)`` float32."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the manifest records: enough to rebuild this embedder."""

    def encode_product_parts(self, products: Sequence[Product], *, progress: bool = False) -> dict[str, np.ndarray]:
        """The fused product vectors and, where the embedder has them, each modality's own vector in the
        same space (``text``, ``image``; unit rows, zero where a product lacks the modality), so a
        reranker can tell how much of a match comes from the title and how much from the picture."""
        return {"fused": self.encode_products(products, progress=progress)}


def product_image_features(products: Sequence[Product], encode: Callable[[list[str]], np.ndarray],
                           dim: int, *, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each product's image feature (the mean direction of its images) and whether it has any.

    ``encode`` maps a list of image paths to rows; all images are encoded in one call. With
    ``normalize=False`` (feature maps for a trainable backbone top, whose scale matters) the plain
    mean is returned instead of its direction.
    """
    owners = [row for row, product in enumerate(products) for _ in product.images]
    paths = [image for product in products for image in product.images]
    has_image = np.array([bool(product.images) for product in products], dtype=bool)
    if not paths:
        return np.zeros((len(products), dim), dtype=np.float32), has_image
    encoded = encode(paths)
    summed = np.zeros((len(products), encoded.shape[1]), dtype=np.float32)
    np.add.at(summed, owners, encoded)
    if not normalize:
        counts = np.bincount(owners, minlength=len(products)).reshape(-1, 1)
        return (summed / np.maximum(counts, 1)).astype(np.float32), has_image
    norms = np.linalg.norm(summed, axis=1, keepdims=True)
    return np.where(norms > 0, summed / np.maximum(norms, 1e-12), 0.0).astype(np.float32), has_image
