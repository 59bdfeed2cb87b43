import json
import sqlite3
from pathlib import Path

import pytest

from vitrine.catalog import Catalog, Product, Store
from vitrine.errors import StoreError, UnknownProductError


def product(pid: str, title: str = "Thing", **kwargs) -> Product:
    return Product(id=pid, title=title, **kwargs)


def test_upsert_adds_updates_and_skips_unchanged(tmp_path: Path):
    catalog = Catalog(tmp_path / "c.sqlite")
    counts = catalog.upsert([product("a", attributes={"price": 3}), product("b")])
    assert (counts.added, counts.updated, counts.unchanged) == (2, 0, 0)
    before = catalog.versions()
    counts = catalog.upsert([product("a", attributes={"price": 3}), product("b", title="New title")])
    assert (counts.added, counts.updated, counts.unchanged) == (0, 1, 1)
    after = catalog.versions()
    key_a, key_b = catalog.key_of("a"), catalog.key_of("b")
    assert after[key_a] == before[key_a]
    assert after[key_b] == before[key_b] + 1
    assert catalog.get("b").title == "New title"


def test_round_trip_keeps_every_field_and_survives_reopen(tmp_path: Path):
    original = Product(id="p1", title="Oat milk", description="Creamy.", attributes={"brand": "Oatly", "price": 1.5},
                       images=("images/aa/x.jpg", "images/bb/y.png"), group="g7")
    catalog = Catalog(tmp_path / "c.sqlite")
    catalog.upsert([original])
    catalog.close()
    reopened = Catalog(tmp_path / "c.sqlite")
    assert reopened.get("p1") == original
    assert list(reopened) == [original]
    assert "p1" in reopened and "p2" not in reopened


def test_catalog_uses_wal(tmp_path: Path):
    Catalog(tmp_path / "c.sqlite").upsert([product("a")])
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_keys_are_stable_and_delete_removes(tmp_path: Path):
    catalog = Catalog(tmp_path / "c.sqlite")
    catalog.upsert([product("a"), product("b")])
    key_b = catalog.key_of("b")
    catalog.delete("a")
    assert catalog.key_of("b") == key_b
    assert set(catalog.by_keys([key_b, 999])) == {key_b}
    with pytest.raises(UnknownProductError, match="unknown product id 'a'"):
        catalog.get("a")
    with pytest.raises(UnknownProductError):
        catalog.delete("a")


def test_failed_upsert_commits_nothing(tmp_path: Path):
    catalog = Catalog(tmp_path / "c.sqlite")

    def products():
        yield product("a")
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError):
        catalog.upsert(products())
    assert len(catalog) == 0


def test_store_create_open_and_manifest(tmp_path: Path):
    store = Store.create(tmp_path / "s")
    for folder in ("images", "index", "models", "reports"):
        assert (tmp_path / "s" / folder).is_dir()
    assert store.config_path.is_file()
    store.update_manifest(embedding={"dim": 4})
    again = Store.open(tmp_path / "s")
    assert again.manifest["embedding"] == {"dim": 4}
    assert again.manifest["format"] == 1


def test_store_errors_are_clear(tmp_path: Path):
    with pytest.raises(StoreError, match="not a vitrine store"):
        Store.open(tmp_path / "missing")
    Store.create(tmp_path / "s")
    manifest = tmp_path / "s" / "manifest.json"
    manifest.write_text(json.dumps({"format": 99}))
    with pytest.raises(StoreError, match="format 99 is not supported"):
        Store.open(tmp_path / "s")
