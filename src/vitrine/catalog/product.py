"""The records that flow through vitrine: products and labelled queries."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Product:
    """One listing in a shop's catalog.

    ``images`` are paths: absolute or relative to the source file while loading, relative to the
    store once ingested. ``group`` names a set of listings of the same item (a prototype label).
    """

    id: str
    title: str
    description: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    images: tuple[str, ...] = ()
    group: str | None = None

    @property
    def text(self) -> str:
        """What a text tower reads: the title, then the description."""
        return f"{self.title}. {self.description}".strip() if self.description else self.title

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["images"] = list(self.images)
        return record

    def content_key(self) -> str:
        """A canonical serialisation: equal for products that need no re-indexing."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Sourced:
    """A product with the place it was read from (``file:line``), for error messages."""

    product: Product
    where: str


@dataclass(frozen=True)
class BadRecord:
    """A record a loader could not turn into a product, and why."""

    where: str
    reason: str


@dataclass(frozen=True)
class LabelledQuery:
    """A query with its graded relevant products (grade > 0 counts as relevant).

    ``exclude`` lists products that must not count in the ranking at all (for example the listing a
    title query was taken from, when the task is to find the *other* listings of the same item).
    """

    relevant: dict[str, int]
    text: str | None = None
    image: str | None = None
    where: str = ""
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pair:
    """One training example: a query (text, photo or both) and a product it should find.

    ``grade`` is the graded relevance on vitrine's 0-3 scale (3 = exact match); pairs from binary
    data use 3. ``query_key`` groups pairs of the same query (for masking its other relevant products).
    """

    product_id: str
    query_text: str | None = None
    query_image: str | None = None
    grade: int = 3
    query_key: str = ""
