"""The whole path on drawn fixtures with the real default backbones."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import vitrine
from conftest import CATALOG, draw_product
from vitrine.catalog import Product, Store, ingest, load_products
from vitrine.embedding import Query
from vitrine.engine.engine import SearchEngine, SearchOptions
from vitrine.errors import StoreError, VitrineError


def test_text_search_finds_the_described_product(built_store: Path):
    engine = vitrine.open(built_store)
    assert engine.search(text="a warm winter scarf", k=4)[0].product.id == "scarf"
    assert engine.search(text="cup for tea", k=4)[0].product.id == "mug"
    hits = engine.search(text="apple", k=4)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_photo_search_finds_the_pictured_product(built_store: Path, tmp_path: Path):
    engine = vitrine.open(built_store)
    for product_id, _, _, shape, colour, _ in CATALOG:
        # a shopper's photo: bigger, slightly different colour, on a darker background
        photo = draw_product(tmp_path / f"{product_id}.jpg", shape, tuple(max(0, c - 15) for c in colour),
                             size=240, background=(200, 195, 185))
        assert engine.search(image=photo, k=1)[0].product.id == product_id


def test_text_and_photo_together(built_store: Path, tmp_path: Path):
    photo = draw_product(tmp_path / "q.png", "circle", (200, 30, 30))
    hits = vitrine.open(built_store).search(text="red apple", image=photo, k=2)
    assert hits[0].product.id == "apple"


def test_search_validates_its_arguments(built_store: Path):
    engine = vitrine.open(built_store)
    with pytest.raises(VitrineError, match="k must be between 1 and 1000"):
        engine.search(text="apple", k=0)
    with pytest.raises(VitrineError, match="limit is 1000"):
        engine.search(text="a" * 1001)
    with pytest.raises(VitrineError, match="needs text, an image, or both"):
        engine.search()


def test_sync_follows_catalog_changes(tmp_path: Path, catalog_file: Path):
    store = Store.create(tmp_path / "store")
    ingest(store, load_products(catalog_file), progress=False)
    engine = vitrine.open(store)
    assert engine.sync(progress=False).added == 4
    assert engine.sync(progress=False).added == 0  # nothing new: nothing re-embedded

    mug = store.catalog.get("mug")
    store.catalog.upsert([replace(mug, title="Green Garden Hose", description="A long rubber hose for watering plants.")])
    store.catalog.delete("cone")
    report = engine.sync(progress=False)
    assert (report.added, report.removed, report.total) == (1, 1, 3)
    assert engine.search(text="garden hose for watering", k=1)[0].product.id == "mug"
    assert "cone" not in {h.product.id for h in engine.search(text="traffic cone", k=10)}

    reopened = vitrine.open(store.root)  # a new process sees the same index and versions
    assert reopened.sync(progress=False).added == 0
    assert np.allclose(reopened.index.reconstruct(store.catalog.key_of("apple")),
                       engine.index.reconstruct(store.catalog.key_of("apple")))


def test_products_without_images_are_searchable_by_text(tmp_path: Path):
    store = Store.create(tmp_path / "store")
    store.catalog.upsert([Product("tea", "Green tea", "Loose leaf sencha."), Product("soap", "Hand soap")])
    engine = vitrine.open(store)
    engine.sync(progress=False)
    assert engine.search(text="japanese green tea leaves", k=1)[0].product.id == "tea"


def test_lost_index_file_is_rebuilt_from_the_catalog(built_store: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built_store, copy)
    (copy / "index" / "faiss.npz").write_bytes(b"garbage from a bad disk")
    engine = vitrine.open(copy)
    assert len(engine.index) == 0
    assert engine.sync(progress=False).total == 4
    assert engine.search(text="traffic cone", k=1)[0].product.id == "cone"


def test_opening_a_non_store_is_a_clear_error(tmp_path: Path):
    with pytest.raises(StoreError, match="not a vitrine store"):
        vitrine.open(tmp_path)


def cable_store(tmp_path: Path) -> tuple[Store, SearchEngine]:
    """Twelve look-alike cables told apart only by a part number: what BM25 finds and vectors blur."""
    store = Store.create(tmp_path / "store")
    store.catalog.upsert([Product(f"cable-{i}", f"USB cable {i} m", f"Charging cable, part no. QX{7000 + i}")
                          for i in range(12)])
    engine = vitrine.open(store)
    engine.sync(progress=False)
    return store, engine


def test_lexical_fusion_finds_exact_codes(tmp_path: Path):
    store, engine = cable_store(tmp_path)
    hits = engine.search(text="QX7007", k=3, lexical=True)
    assert hits[0].product.id == "cable-7"
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    reopened = vitrine.open(store.root)
    assert len(reopened.lexical) == 12  # saved with the index
    assert reopened.search(text="QX7007", k=1, lexical=True)[0].product.id == "cable-7"
    store.catalog.delete("cable-7")
    reopened.sync(progress=False)
    assert "cable-7" not in {h.product.id for h in reopened.search(text="QX7007", k=12, lexical=True)}


def test_convex_fusion_through_the_engine(tmp_path: Path):
    _, engine = cable_store(tmp_path)
    engine.config.search.fusion = "convex"
    hits = engine.search(text="QX7007", k=12, lexical=True)
    assert hits[0].product.id == "cable-7" and len(hits) == 12
    scores = [hit.score for hit in hits]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    assert scores[0] >= 0.5  # the only BM25 match: its normalised BM25 score alone is 1, weighted 0.5
    leaning = engine.search_many([Query(text="QX7007")], k=1, lexical=True,
                                 options=SearchOptions(weights={"lexical": 0.0}))[0]
    vector_only = engine.search(text="QX7007", k=1)
    assert leaning[0].product.id == vector_only[0].product.id  # lexical weight 0: the vector order alone
    engine.config.search.fusion = "average"
    with pytest.raises(VitrineError, match="unknown search.fusion 'average'"):
        engine.search(text="QX7007", k=3, lexical=True)


def test_lost_lexical_file_is_refilled_without_re_embedding(built_store: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built_store, copy)
    (copy / "index" / "lexical.json").unlink()
    engine = vitrine.open(copy)
    assert len(engine.lexical) == 0
    report = engine.sync(progress=False)
    assert report.added == 0 and len(engine.lexical) == 4
    assert engine.search(text="Orange Traffic Cone", k=1, lexical=True)[0].product.id == "cone"
