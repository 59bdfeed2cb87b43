"""What the index holds for a product: its entries, and a fingerprint of what each one embeds.

A fingerprint covers only what the embedder reads (the text and the image files), so a change to
attributes, price or group moves nothing in the index, and a product whose third photo changed
re-embeds that photo's entry alone (with ``index.entries = "image"``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from vitrine.catalog import Product
from vitrine.errors import VitrineError
from vitrine.index.entries import MAX_SLOTS, entry_ids

ENTRY_MODES = ("product", "image")


@dataclass(frozen=True)
class Entry:
    id: int
    """The vector id: the product key (``product`` mode) or key and image slot packed (``image`` mode)."""
    product: Product
    """What to embed: the product, or in ``image`` mode the product with this one image."""
    fingerprint: int


def entries_of(key: int, product: Product, mode: str) -> list[Entry]:
    if mode == "product":
        return [Entry(int(key), product, fingerprint(product.text, product.images))]
    if mode != "image":
        raise VitrineError(f"index.entries must be one of {', '.join(ENTRY_MODES)}, not {mode!r}")
    if len(product.images) > MAX_SLOTS:
        raise VitrineError(f"product {product.id!r} has {len(product.images)} images; at most {MAX_SLOTS} "
                           "can be indexed one by one")
    parts = [replace(product, images=(image,)) for image in product.images] or [product]
    return [Entry(int(id_), part, fingerprint(part.text, part.images))
            for id_, part in zip(entry_ids(key, len(parts)).tolist(), parts)]


def fingerprint(text: str, images: tuple[str, ...]) -> int:
    """A signed 64-bit digest of the embedded content (store image paths name their content)."""
    digest = hashlib.blake2b("\x00".join((text, *images)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
