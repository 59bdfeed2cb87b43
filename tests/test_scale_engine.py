"""Search features through the engine, CLI and HTTP API: filters, weights, modifiers, per-image entries
with grouping, partial updates, Milvus as the store's index, and Ray vs local encoding."""

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import vitrine
from conftest import draw_product, write_jsonl
from vitrine.catalog import FilterError, Product, Store, ingest, load_products
from vitrine.catalog.ingest import store_image_bytes
from vitrine.cli import app
from vitrine.config import ServeConfig
from vitrine.errors import VitrineError
from vitrine.serve import create_app

# id, title, shape, colour, attributes
SHOP = [
    ("apple", "Red Apple", "circle", (200, 30, 30), {"category": "Fruit", "price": 3, "popularity": 100}),
    ("greenapple", "Green Apple", "circle", (40, 180, 40), {"category": "Fruit", "price": 30, "popularity": 2}),
    ("mug", "Blue Coffee Mug", "square", (30, 60, 200), {"category": "Kitchen", "price": 9, "popularity": 5}),
    ("scarf", "Striped Wool Scarf", "stripes", (40, 150, 60), {"category": "Clothing", "price": 25}),
    ("cone", "Orange Traffic Cone", "triangle", (250, 140, 20), {"category": "Tools", "price": 12, "popularity": 1000}),
]


def build_shop(root: Path, overrides: dict | None = None, images_per_product: int = 1) -> Path:
    records = []
    for product_id, title, shape, colour, attributes in SHOP:
        images = []
        for n in range(images_per_product):
            shade = tuple(min(255, c + 12 * n) for c in colour)
            images.append(f"img/{product_id}-{n}.png")
            draw_product(root / images[-1], shape, shade)
        records.append({"id": product_id, "title": title, "description": f"{title} for the shop.",
                        "attributes": attributes, "images": images})
    store = Store.create(root / "store")
    if overrides:
        store.config(overrides).save(store.config_path)
    ingest(store, load_products(write_jsonl(root / "products.jsonl", records)), progress=False)
    return root / "store"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory):
    store = build_shop(tmp_path_factory.mktemp("shop"))
    engine = vitrine.open(store)
    engine.sync(progress=False)
    return engine


def ids(hits) -> list[str]:
    return [hit.product.id for hit in hits]


def test_filter_applies_during_search(shop):
    everything = ids(shop.search(text="apple fruit", k=5))
    fruit = ids(shop.search(text="apple fruit", k=5, filter='category == "Fruit"'))
    assert fruit == [i for i in everything if i in {"apple", "greenapple"}]  # brute force: the same order
    cheap = ids(shop.search(text="apple fruit", k=5, filter="price < 10 and not category in ['Tools']"))
    assert cheap == [i for i in everything if i in {"apple", "mug"}]
    assert shop.search(text="apple", k=3, filter='category == "Nothing"') == []
    with pytest.raises(FilterError, match="expected a value at the end"):
        shop.search(text="apple", filter="price <")


def test_modifiers_follow_the_documented_formula(shop):
    plain = shop.search(text="something for the shop", k=5)
    boosted = shop.search(text="something for the shop", k=5, modifiers={"popularity": 0.05, "price": -0.01})

    def expected(hit) -> float:
        attributes = hit.product.attributes
        return (hit.score + 0.05 * math.log1p(attributes.get("popularity", 0))
                - 0.01 * math.log1p(attributes["price"]))

    ranked = sorted(plain, key=lambda hit: -expected(hit))
    assert ids(boosted) == ids(ranked)
    assert [hit.score for hit in boosted] == pytest.approx([expected(hit) for hit in ranked], abs=1e-5)
    assert ids(boosted) != ids(plain)  # the cone's popularity moves it up: the test can tell


def test_text_and_image_weights(shop, tmp_path: Path):
    photo = draw_product(tmp_path / "cone.png", "triangle", (250, 140, 20), size=200)
    text_only = ids(shop.search(text="coffee mug", k=5))
    photo_only = ids(shop.search(image=photo, k=5))
    assert text_only != photo_only
    assert ids(shop.search(text="coffee mug", image=photo, k=5, weights={"text": 1, "image": 0})) == text_only
    assert ids(shop.search(text="coffee mug", image=photo, k=5, weights={"text": 0, "image": 1})) == photo_only
    with pytest.raises(VitrineError, match="unknown weight 'colour'"):
        shop.search(text="mug", weights={"colour": 1})


def test_attribute_changes_embed_nothing_and_leave_vectors_alone(shop, monkeypatch):
    before = {key: shop.index.reconstruct(key).copy() for key in shop.index.ids().tolist()}
    embedded = []
    original = shop.embedder.encode_products
    monkeypatch.setattr(shop.embedder, "encode_products",
                        lambda products, **kw: embedded.extend(p.id for p in products) or original(products, **kw))
    mug = shop.catalog.get("mug")
    shop.upsert([replace(mug, attributes={**mug.attributes, "price": 99, "popularity": 7})])
    assert embedded == []
    assert shop.index_state().current
    assert ids(shop.search(text="mug", k=5, filter="price > 50")) == ["mug"]
    for key, vector in before.items():
        np.testing.assert_array_equal(shop.index.reconstruct(key), vector)
    shop.upsert([replace(mug, title="Blue Tea Mug")])  # the title is embedded: this one is redone
    assert embedded == ["mug"]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory):
    """One entry per image: every product has three photos of itself."""
    store = build_shop(tmp_path_factory.mktemp("gallery"), {"index.entries": "image"}, images_per_product=3)
    engine = vitrine.open(store)
    report = engine.sync(progress=False)
    assert (report.added, report.embedded, len(engine.index)) == (5, 15, 15)
    return engine


def test_results_are_grouped_one_per_product(gallery, tmp_path: Path):
    photo = draw_product(tmp_path / "apple.png", "circle", (205, 35, 35), size=200)
    hits = gallery.search(image=photo, k=3)
    assert len(hits) == 3 and len(set(ids(hits))) == 3  # not the apple's three photos
    assert hits[0].product.id == "apple"
    entries = gallery.index.search(gallery.embedder.encode_queries([vitrine.embedding.Query(image=photo)]), 15)
    scores, entry_ids = entries
    apple_best = max(float(s) for s, i in zip(scores[0], entry_ids[0]) if i >> 8 == hits[0].product_key)
    assert hits[0].score == pytest.approx(apple_best)  # a product scores as its best image
    assert ids(gallery.search(image=photo, k=3, filter='category != "Fruit"'))[0] != "apple"


def test_changing_one_image_re_embeds_only_that_image(gallery, tmp_path: Path):
    mug = gallery.catalog.get("mug")
    key = gallery.catalog.key_of("mug")
    before = {id_: gallery.index.reconstruct(id_).copy() for id_ in gallery.index.ids().tolist()}
    photo = draw_product(tmp_path / "new.png", "stripes", (10, 10, 10)).read_bytes()
    new_image = store_image_bytes(gallery.store, photo, "new mug photo")
    counted = []
    original = gallery.embedder.encode_products
    gallery.embedder.encode_products = lambda products, **kw: counted.extend(products) or original(products, **kw)
    try:
        gallery.upsert([replace(mug, images=(mug.images[0], new_image, mug.images[2]))])
        assert [Path(p.images[0]).name for p in counted] == [Path(new_image).name]
        changed = (key << 8) | 1
        after = {id_: gallery.index.reconstruct(id_) for id_ in gallery.index.ids().tolist()}
        assert set(after) == set(before)
        assert not np.allclose(after[changed], before[changed])
        for id_ in before:
            if id_ != changed:
                np.testing.assert_array_equal(after[id_], before[id_])
        counted.clear()
        gallery.upsert([replace(mug, images=(mug.images[0],))])  # two photos dropped: nothing to embed
        assert counted == [] and len(gallery.index) == 13
    finally:
        del gallery.embedder.encode_products


def test_milvus_lite_as_the_stores_index(shop, tmp_path: Path, monkeypatch):
    root = Path(shutil.copytree(shop.store.root, tmp_path / "store"))
    engine = vitrine.open(root, config_overrides={"index.uri": "vectors.db"})
    assert engine.sync(progress=False).added == 5
    assert engine.index.describe()["backend"] == "milvus" and engine.index.holds_attributes
    for query in ("coffee mug", "apple fruit"):
        assert ids(engine.search(text=query, k=5)) == ids(shop.search(text=query, k=5))
    filters = ['category == "Fruit"', "price < 10 and not category in ['Tools']", "not popularity >= 5"]
    with monkeypatch.context() as patch:  # the filter runs inside Milvus: the catalog is not asked
        patch.setattr(engine.catalog, "keys_matching", lambda where: pytest.fail(f"the catalog evaluated {where.text}"))
        for text in filters:
            assert ids(engine.search(text="apple", k=5, filter=text)) == ids(shop.search(text="apple", k=5, filter=text))
    assert ids(engine.search(text="apple", k=5, filter=filters[0], lexical=True)) == \
        ids(shop.search(text="apple", k=5, filter=filters[0], lexical=True))
    embedded = []
    original = engine.embedder.encode_products
    monkeypatch.setattr(engine.embedder, "encode_products",
                        lambda products, **kw: embedded.extend(p.id for p in products) or original(products, **kw))
    scarf = engine.catalog.get("scarf")
    engine.upsert([replace(scarf, attributes={**scarf.attributes, "category": "Fruit"})])
    assert embedded == []  # only attributes changed: Milvus gets the new document, the vector stays
    assert set(ids(engine.search(text="apple", k=5, filter=filters[0]))) == {"apple", "greenapple", "scarf"}
    engine.index.close()


def test_ray_encoding_matches_local(ray_engine, tmp_path: Path):
    # Text-only products: a Ray worker then loads only the text backbone, which keeps the test short.
    store = Store.create(tmp_path / "local")
    store.config({"batch.workers": 1}).save(store.config_path)
    store.catalog.upsert([Product(f"p{n}", title, f"{title} for the shop.", attributes=attributes)
                          for n, (_, title, _, _, attributes) in enumerate(SHOP)])
    local = vitrine.open(store)
    local.sync(progress=False, chunk=2)
    root = Path(shutil.copytree(store.root, tmp_path / "ray"))
    on_ray = vitrine.open(root, config_overrides={"batch.engine": "ray"})
    report = on_ray.sync(rebuild=True, progress=False, chunk=2)  # three batches over the Ray actor
    assert report.embedded == 5
    for key in local.index.ids().tolist():
        np.testing.assert_allclose(on_ray.index.reconstruct(key), local.index.reconstruct(key), atol=1e-5)


def test_cli_and_http_take_filters_weights_and_boosts(shop):
    runner = CliRunner()
    result = runner.invoke(app, ["search", str(shop.store.root), "--text", "apple", "--json", "-f",
                                 'category == "Fruit"', "--boost", "popularity=0.1", "--weight", "lexical=1"])
    assert result.exit_code == 0, result.output
    assert {hit["id"] for hit in json.loads(result.output)} == {"apple", "greenapple"}
    result = runner.invoke(app, ["search", str(shop.store.root), "--text", "apple", "--filter", "price <"])
    assert result.exit_code == 2 and "filter 'price <'" in result.output and "Traceback" not in result.output

    with TestClient(create_app(shop, ServeConfig())) as client:
        answer = client.get("/search", params={"q": "apple", "filter": 'category == "Fruit"', "boost": "popularity=1"})
        assert answer.status_code == 200, answer.text
        assert [hit["product"]["id"] for hit in answer.json()["results"]] == ["apple", "greenapple"]
        assert answer.json()["query"]["filter"] == 'category == "Fruit"'
        answer = client.post("/search", json={"text": "something for the shop", "k": 2,
                                              "modifiers": {"popularity": 1.0}, "weights": {"lexical": 0.5}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["product"]["id"] == "cone"  # log1p(1000) outweighs any cosine
        bad = client.get("/search", params={"q": "apple", "filter": "price <"})
        assert bad.status_code == 400 and "filter" in bad.json()["error"]
