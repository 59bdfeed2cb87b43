"""Errors a user can cause and fix: the CLI and the service print these as one line."""

from __future__ import annotations


class VitrineError(Exception):
    """Base class for user-facing errors: bad input, unknown ids, a store that is not there."""


class DataError(VitrineError):
    """A record in an input file is malformed. ``where`` names the file and line."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason

    def __reduce__(self):  # survive the trip back from a DataLoader worker
        return (type(self), (self.where, self.reason))


class ImageError(DataError):
    """An image is missing, not an image, or too large to decode safely."""


class StoreError(VitrineError):
    """The store directory is missing, incomplete, or from an incompatible version."""


class UnknownProductError(VitrineError, KeyError):
    """A product id that the catalog does not hold."""

    def __init__(self, product_id: str) -> None:
        super().__init__(f"unknown product id {product_id!r}")
        self.product_id = product_id

    def __str__(self) -> str:  # KeyError would otherwise quote the message again
        return self.args[0]


class ProductExistsError(VitrineError):
    """A product id that the catalog already holds, where a new one was asked for."""

    def __init__(self, product_id: str) -> None:
        super().__init__(f"product {product_id!r} already exists")
        self.product_id = product_id


class DimensionError(VitrineError, ValueError):
    """Vectors whose width does not match the index or model."""
