"""The store: one directory that holds everything a running engine needs.

::

    store/
      manifest.json    versions, embedding, index kind, created/updated times
      config.toml      the settings the store was built with
      catalog.sqlite   products (the source of truth; everything else is rebuilt from it)
      images/          product images, content-addressed, so the store is self-contained
      models/<name>/   trained heads and rerankers
      index/           vector index files
      reports/         evaluation and governance reports
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path
from typing import Any

from vitrine import __version__
from vitrine.catalog.sqlite import Catalog
from vitrine.config import Config, write_atomic
from vitrine.errors import StoreError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class Store:
    """A store directory. ``Store.create`` makes one; ``Store.open`` opens an existing one."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def create(cls, root: Path, config: Config | None = None) -> "Store":
        """Make a new store, or open the one already at ``root`` (its own config wins)."""
        root = Path(root)
        if (root / MANIFEST).exists():
            return cls.open(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root}: exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root)
        for folder in ("images", "models", "index", "reports"):
            (root / folder).mkdir(exist_ok=True)
        (config or Config()).save(store.config_path)
        now = _now()
        store.write_manifest({"format": FORMAT_VERSION, "vitrine": __version__,
                              "created_at": now, "updated_at": now})
        return store

    @classmethod
    def open(cls, root: Path) -> "Store":
        root = Path(root)
        if not (root / MANIFEST).is_file():
            raise StoreError(f"{root}: not a vitrine store (no {MANIFEST}); create one with 'vitrine ingest'")
        store = cls(root)
        found = store.manifest.get("format")
        if found != FORMAT_VERSION:
            raise StoreError(f"{root}: store format {found} is not supported (this vitrine reads {FORMAT_VERSION})")
        return store

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.root / "catalog.sqlite")

    def config(self, overrides: dict[str, Any] | None = None) -> Config:
        path = self.config_path if self.config_path.exists() else None
        return Config.load(path, overrides)

    def resolve(self, image: str) -> Path:
        """A stored image path (relative to the store) as a path on this machine."""
        return self.root / image

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{self.root / MANIFEST}: unreadable ({exc})") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_atomic(self.root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())

    def update_manifest(self, **sections: Any) -> dict[str, Any]:
        """Replace top-level sections of the manifest and stamp ``updated_at``."""
        manifest = self.manifest
        manifest.update(sections)
        manifest["updated_at"] = _now()
        self.write_manifest(manifest)
        return manifest


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
