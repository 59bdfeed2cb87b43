"""The durable catalog: products in SQLite (WAL), the source of truth of a store.

Every product row has an integer ``key`` that never changes (vector indexes use it as the vector
id) and a ``version`` that grows each time the product's content changes, so an index can tell
what it is missing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitrine.catalog.filters import Filter
from vitrine.catalog.product import Product
from vitrine.errors import StoreError, UnknownProductError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    key         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    title       TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    attributes  TEXT NOT NULL DEFAULT '{}',
    images      TEXT NOT NULL DEFAULT '[]',
    grp         TEXT,
    version     INTEGER NOT NULL DEFAULT 1,
    updated_at  REAL NOT NULL
);
"""


@dataclass(frozen=True)
class UpsertCounts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0


class Catalog:
    """Products by id, stored in one SQLite file. Safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open catalog ({exc})") from None
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed write survives power loss too, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __len__(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM products")

    def __contains__(self, product_id: object) -> bool:
        return self._row("SELECT 1 FROM products WHERE id = ?", (product_id,)) is not None

    def upsert(self, products: Iterable[Product]) -> UpsertCounts:
        """Add new products and replace changed ones, in one transaction."""
        added = updated = unchanged = 0
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for product in products:
                    row = self._db.execute(
                        "SELECT id, title, description, attributes, images, grp FROM products WHERE id = ?",
                        (product.id,),
                    ).fetchone()
                    if row is None:
                        self._db.execute(
                            "INSERT INTO products (id, title, description, attributes, images, grp, version, updated_at)"
                            " VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
                            (*_columns(product), now),
                        )
                        added += 1
                    elif _product(row).content_key() == product.content_key():
                        unchanged += 1
                    else:
                        self._db.execute(
                            "UPDATE products SET title = ?, description = ?, attributes = ?, images = ?, grp = ?,"
                            " version = version + 1, updated_at = ? WHERE id = ?",
                            (*_columns(product)[1:], now, product.id),
                        )
                        updated += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return UpsertCounts(added, updated, unchanged)

    def delete(self, product_id: str) -> None:
        with self._lock:
            if self._db.execute("DELETE FROM products WHERE id = ?", (product_id,)).rowcount == 0:
                raise UnknownProductError(product_id)

    def get(self, product_id: str) -> Product:
        row = self._row(f"SELECT {_FIELDS} FROM products WHERE id = ?", (product_id,))
        if row is None:
            raise UnknownProductError(product_id)
        return _product(row)

    def key_of(self, product_id: str) -> int:
        row = self._row("SELECT key FROM products WHERE id = ?", (product_id,))
        if row is None:
            raise UnknownProductError(product_id)
        return int(row[0])

    def by_keys(self, keys: Sequence[int]) -> dict[int, Product]:
        """Products for the given keys; keys no longer in the catalog are left out."""
        found: dict[int, Product] = {}
        for start in range(0, len(keys), 500):
            chunk = [int(k) for k in keys[start:start + 500]]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, {_FIELDS} FROM products WHERE key IN ({marks})", chunk).fetchall()
            found.update((int(row[0]), _product(row[1:])) for row in rows)
        return found

    def keys_matching(self, where: Filter) -> np.ndarray:
        """Keys of the products a filter admits, sorted (the catalog evaluates it, so attributes
        never need copying into the vector index)."""
        condition, params = where.sql()
        with self._lock:
            rows = self._db.execute(f"SELECT key FROM products WHERE COALESCE({condition}, 0) ORDER BY key",
                                    params).fetchall()
        return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))

    def versions(self) -> dict[int, int]:
        """``key → version`` for every product: what an index must hold to be current."""
        with self._lock:
            return dict(self._db.execute("SELECT key, version FROM products").fetchall())

    def versions_of(self, product_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``id → (key, version)`` for the given ids that the catalog holds."""
        found: dict[str, tuple[int, int]] = {}
        for start in range(0, len(product_ids), 500):
            chunk = list(product_ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(f"SELECT id, key, version FROM products WHERE id IN ({marks})", chunk).fetchall()
            found.update((row[0], (int(row[1]), int(row[2]))) for row in rows)
        return found

    def __iter__(self) -> Iterator[Product]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_FIELDS} FROM products ORDER BY key").fetchall()
        return (_product(row) for row in rows)

    def _row(self, sql: str, args: tuple) -> tuple | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _scalar(self, sql: str) -> int:
        with self._lock:
            return int(self._db.execute(sql).fetchone()[0])


_FIELDS = "id, title, description, attributes, images, grp"


def _columns(product: Product) -> tuple:
    return (product.id, product.title, product.description,
            json.dumps(product.attributes, sort_keys=True, ensure_ascii=False),
            json.dumps(list(product.images)), product.group)


def _product(row: Sequence) -> Product:
    product_id, title, description, attributes, images, group = row
    return Product(id=product_id, title=title, description=description,
                   attributes=json.loads(attributes), images=tuple(json.loads(images)), group=group)
