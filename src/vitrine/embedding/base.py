"""The embedding seam: products and queries into one vector space."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
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
