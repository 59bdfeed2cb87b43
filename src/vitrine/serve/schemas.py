"""What the API takes and gives, as pydantic models (they are also the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vitrine.catalog import Product

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$"
"""Product ids a URL path can carry as they are: letters, digits and ``._:@+-``, up to 128."""


class Error(BaseModel):
    error: str = Field(description="What was wrong, in one sentence.")


class ProductFields(BaseModel):
    """A product as a shop sends it. Images are base64 (optionally a ``data:`` URL) of JPEG, PNG or WebP."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=500)
    description: str = Field("", max_length=10_000)
    attributes: dict[str, Any] = Field(default_factory=dict)
    group: str | None = Field(None, max_length=200)
    images: list[str] | None = Field(
        None, description="Base64 images. On PUT, leaving this out keeps the product's current images.")


class ProductCreate(ProductFields):
    id: str = Field(pattern=ID_PATTERN)


class ProductOut(BaseModel):
    id: str
    title: str
    description: str
    attributes: dict[str, Any]
    group: str | None
    images: list[str] = Field(description="URLs of the product's images on this server.")

    @classmethod
    def of(cls, product: Product) -> "ProductOut":
        return cls(id=product.id, title=product.title, description=product.description,
                   attributes=product.attributes, group=product.group,
                   images=[f"/{image}" for image in product.images])  # stored as images/..., served at /images/...


class WriteResult(BaseModel):
    product: ProductOut
    created: bool
    timings_ms: dict[str, float]


class SearchJSON(BaseModel):
    """A search as JSON: text, a base64 photo, or both."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = Field(None, description="Base64 JPEG, PNG or WebP (a data: URL is fine).")
    k: int = 10
    rerank: str = "none"
    channel: str = Field("vector", max_length=40, description=(
        "vector, or prototype: ID recognition for exact-product lookup (see /api/info)."))
    filter: str | None = Field(None, max_length=1000, description=(
        'Attribute filter applied during the vector search, e.g. category == "Fruit" and price < 20 '
        "(==, !=, <, <=, >, >=, in [...], and, or, not, parentheses)."))
    weights: dict[str, float] | None = Field(None, description=(
        "text and image: weights of the two halves of a photo + text query; lexical: BM25's weight in fusion."))
    modifiers: dict[str, float] | None = Field(None, description=(
        "Score modifiers over numeric attributes: score + Σ weight·log1p(max(value, 0)), "
        'e.g. {"popularity": 0.05, "price": -0.02}.'))


class Hit(BaseModel):
    rank: int
    score: float
    product: ProductOut


class SearchResponse(BaseModel):
    query: dict[str, Any]
    results: list[Hit]
    timings_ms: dict[str, float] = Field(
        description="Milliseconds per stage: queue (waiting for a model slot), decode, encode, retrieve, fetch, total.")


class Deleted(BaseModel):
    deleted: str


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    reason: str | None = None
    products: int
    indexed: int
    missing: int
    outdated: int
    unsaved_writes: int


class Info(BaseModel):
    name: str
    version: str
    products: int
    embedding: str
    rerankers: list[str]
    channels: list[str]
    writes_enabled: bool
    reads_need_key: bool
    limits: dict[str, int]
