"""What governance writes: a versioned training set in the store, with its audit trail and lineage.

::

    store/governed/<name>/v<N>/
      manifest.json    mode, source (data spec + digest of its pairs), judging model, settings, counts,
                       output digest (equal for equal output: the reproducibility check)
      pairs.jsonl      training pairs in the format 'vitrine train --data' reads (images relative to it)
      products.jsonl   the products as governed (cleaned, enhanced texts) in the format 'vitrine ingest' reads
      audit.jsonl      for every sample and product: before, after, and why
      crops/           salient crops of the photos (juice)
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitrine.catalog.product import Pair, Product
from vitrine.config import write_atomic
from vitrine.errors import StoreError, VitrineError

GOVERNED_DIR = "governed"
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*$")


@dataclass(frozen=True)
class AuditEntry:
    """One governed item: a training sample (``kind="sample"``) or a product text (``kind="product"``)."""

    kind: str
    key: str
    before: dict[str, Any]
    after: dict[str, Any] | None
    """None when the item was dropped."""
    why: tuple[str, ...]


@dataclass
class GovernedSet:
    folder: Path
    manifest: dict[str, Any]
    pairs: list[Pair] = field(default_factory=list)
    products: list[Product] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)

    @property
    def pairs_path(self) -> Path:
        return self.folder / "pairs.jsonl"

    @property
    def products_path(self) -> Path:
        return self.folder / "products.jsonl"


def next_version_folder(store_root: Path, name: str) -> tuple[Path, int]:
    if not _NAME.match(name):
        raise VitrineError(f"governed set name {name!r}: use letters, digits, '.', '_' or '-'")
    base = Path(store_root) / GOVERNED_DIR / name
    versions = [int(p.name[1:]) for p in base.glob("v*") if p.name[1:].isdigit()] if base.is_dir() else []
    version = max(versions, default=0) + 1
    return base / f"v{version}", version


def write_set(governed: GovernedSet) -> GovernedSet:
    """Write pairs, products and audit, then the manifest with the output digest (written last: a folder
    without a manifest is an interrupted run)."""
    folder = governed.folder
    folder.mkdir(parents=True, exist_ok=True)
    pairs = _jsonl(_pair_record(pair, folder) for pair in governed.pairs)
    products = _jsonl(product.to_dict() for product in governed.products)
    audit = _jsonl(asdict(entry) for entry in governed.audit)
    for name, data in (("pairs.jsonl", pairs), ("products.jsonl", products), ("audit.jsonl", audit)):
        write_atomic(folder / name, data)
    digest = hashlib.sha256()
    for data in (pairs, products, audit):
        digest.update(hashlib.sha256(data).digest())
    for crop in sorted((folder / "crops").glob("*")) if (folder / "crops").is_dir() else []:
        digest.update(crop.name.encode() + hashlib.sha256(crop.read_bytes()).digest())
    governed.manifest["output_digest"] = digest.hexdigest()
    governed.manifest["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_atomic(folder / "manifest.json", json.dumps(governed.manifest, indent=2, sort_keys=True).encode())
    return governed


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise StoreError(f"{folder}: not a governed set (no manifest.json)")
    return json.loads(path.read_text())


def pairs_digest(pairs: Iterable[Pair]) -> str:
    """The identity of a source training set: its pairs, in order."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps(asdict(pair), sort_keys=True).encode())
    return digest.hexdigest()


def _pair_record(pair: Pair, folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"product_id": pair.product_id, "grade": pair.grade}
    if pair.query_text:
        record["query_text"] = pair.query_text
    if pair.query_image:
        image = Path(pair.query_image)
        record["query_image"] = str(image.relative_to(folder)) if image.is_relative_to(folder) else str(image)
    if pair.query_key and pair.query_key != (pair.query_text or pair.query_image):
        record["query_key"] = pair.query_key  # a crop stays one query with its photo (same side of the dev split)
    return record


def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for record in records).encode()
