"""Bringing products into a store: validate, copy images in, upsert into the catalog."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace

from vitrine.catalog.images import MAX_PIXELS, check_image, content_name, read_image_bytes
from vitrine.catalog.loaders import Record
from vitrine.catalog.product import BadRecord, Product, Sourced
from vitrine.catalog.store import Store
from vitrine.config import write_atomic
from vitrine.errors import DataError
from vitrine.progress import progress_bar


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[BadRecord] = field(default_factory=list)

    @property
    def read(self) -> int:
        return self.added + self.updated + self.unchanged + len(self.skipped)

    def summary(self) -> str:
        text = f"{self.read} records: {self.added} added, {self.updated} updated, {self.unchanged} unchanged"
        return text + (f", {len(self.skipped)} skipped" if self.skipped else "")


def ingest(store: Store, records: Iterable[Record], *, skip_bad: bool = False, progress: bool = True,
           max_pixels: int = MAX_PIXELS) -> IngestReport:
    """Validate ``records`` and upsert them into ``store``'s catalog in one transaction.

    A bad record (malformed, duplicate id, missing or broken image) stops the whole ingest with a
    ``DataError`` naming its file and line, so nothing half-done is committed; with ``skip_bad`` it
    is left out and listed in the report instead.
    """
    report = IngestReport()
    seen: set[str] = set()
    products: list[Product] = []
    for record in progress_bar(records, enabled=progress, desc="ingest", unit=" products"):
        try:
            products.append(_accept(store, record, seen, max_pixels))
        except DataError as exc:
            if not skip_bad:
                raise
            report.skipped.append(BadRecord(exc.where, exc.reason))
    counts = store.catalog.upsert(products)
    report.added, report.updated, report.unchanged = counts.added, counts.updated, counts.unchanged
    store.update_manifest(catalog={"products": len(store.catalog)})
    return report


def _accept(store: Store, record: Record, seen: set[str], max_pixels: int) -> Product:
    if isinstance(record, BadRecord):
        raise DataError(record.where, record.reason)
    assert isinstance(record, Sourced)
    product = record.product
    if product.id in seen:
        raise DataError(record.where, f"duplicate product id {product.id!r}")
    seen.add(product.id)
    stored = tuple(store_image(store, path, record.where, max_pixels) for path in product.images)
    return replace(product, images=stored)


def store_image(store: Store, path: str, where: str, max_pixels: int = MAX_PIXELS) -> str:
    """Copy the image at ``path`` into the store (once per content); return its store-relative path."""
    return store_image_bytes(store, read_image_bytes(path, where), f"{where}: {path}", max_pixels)


def store_image_bytes(store: Store, data: bytes, where: str, max_pixels: int = MAX_PIXELS,
                      formats: Collection[str] | None = None) -> str:
    """Check ``data`` and write it into the store (durably, once per content); return its store-relative path."""
    extension = check_image(data, where, max_pixels, formats)
    relative = f"images/{content_name(data, extension)}"
    target = store.resolve(relative)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
    return relative
