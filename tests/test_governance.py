"""vitrine.governance: salient crops, text noise removal, enhancement, audit, sieve, parity, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from conftest import CATALOG, draw_product
from vitrine.catalog import Store, ingest, load_products
from vitrine.catalog.datasets import pairs_jsonl
from vitrine.engine import SearchOptions
from vitrine.catalog.product import Pair
from vitrine.config import Config, GovernanceConfig
from vitrine.errors import VitrineError
from vitrine.governance import TextCleaner, enhance, govern, sieve, sieve_scores
from vitrine.governance.judge import Judge
from vitrine.governance.pipeline import sample_pairs
from vitrine.governance.saliency import SaliencyModel

OBJECT_BOXES = [(200, 120, 300, 220), (20, 20, 110, 110), (130, 80, 210, 160)]


def cluttered_photo(seed: int, box: tuple[int, int, int, int], colour=(220, 30, 30),
                    size=(320, 240)) -> Image.Image:
    """A coloured object on a grey background strewn with lines and boxes (a shelf, drawn)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (120, 120, 120))
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y, grey = int(rng.integers(0, size[0])), int(rng.integers(0, size[1])), int(rng.integers(60, 200))
        draw.line((x, y, x + int(rng.integers(-40, 40)), y + int(rng.integers(-40, 40))), fill=(grey,) * 3, width=2)
    for _ in range(15):
        x, y, grey = int(rng.integers(0, size[0])), int(rng.integers(0, size[1])), int(rng.integers(80, 180))
        draw.rectangle((x, y, x + int(rng.integers(5, 25)), y + int(rng.integers(5, 25))), outline=(grey,) * 3)
    draw.ellipse(box, fill=colour)
    return image


@pytest.fixture(scope="module")
def saliency() -> SaliencyModel:
    return SaliencyModel(GovernanceConfig())


@pytest.mark.parametrize("seed,box", list(enumerate(OBJECT_BOXES)))
def test_salient_crop_keeps_the_object_and_drops_background(saliency, seed, box):
    found = saliency.analyse(cluttered_photo(seed, box))
    left, top, right, bottom = found.box
    assert left <= box[0] and top <= box[1] and right >= box[2] and bottom >= box[3], (found.box, box)
    assert found.kept_area < 0.7  # background went
    assert found.heat.shape == (9, 12) and found.heat.max() == pytest.approx(1.0)


# --- text branch ---------------------------------------------------------------------------------

NOISY = [
    ("<b>Oatly Oat Milk 1L</b> - FREE SHIPPING!!", "Oatly Oat Milk 1L", ["<b>", "FREE SHIPPING"]),
    ("Apple Apple iPhone 6 Case &amp; Cover", "Apple iPhone 6 Case & Cover", ["Apple Apple"]),
    ("Nike Air Zoom Running Shoe | Best Seller | Shop Now", "Nike Air Zoom Running Shoe", ["Best Seller", "Shop Now"]),
]


@pytest.mark.parametrize("noisy,clean,gone", NOISY)
def test_noise_removal_keeps_product_words(noisy, clean, gone):
    result = TextCleaner.fit([], GovernanceConfig()).clean(noisy, title=True)
    assert result.after == clean
    for noise in gone:
        assert noise not in result.after
    assert result.removed and all(r.reason in {"html", "promotional", "repeated"} for r in result.removed)


def test_boilerplate_is_learned_from_the_catalog_not_only_the_lexicon():
    shop_line = "Returns accepted within thirty days of purchase."
    catalog = [f"Product number {i} is a sturdy thing. {shop_line}" for i in range(10)]
    description = ("Warm wool socks for hiking. <br>Returns accepted within thirty days of purchase.\n"
                   "Package Quantity: 2\nDimensions: 10 x 4 in\nWeight: 3 oz\nMaterial: Merino wool\n"
                   "Warm wool socks for hiking.")
    fitted = TextCleaner.fit(catalog, GovernanceConfig(boilerplate_min_products=5, lexicon=""))
    result = fitted.clean(description)
    assert result.after == "Warm wool socks for hiking. Material: Merino wool"
    reasons = {r.reason for r in result.removed}
    assert reasons == {"html", "boilerplate", "spec", "repeated"}
    # The same text cleaned by a cleaner that has not seen the catalog keeps the shop's line.
    assert shop_line in TextCleaner.fit([], GovernanceConfig(lexicon="")).clean(description).after
    assert result.tokens_after < result.tokens_before


def test_enhancement_adds_only_new_tags():
    text, added = enhance("A crisp red apple.", ["apple", "fruit", "Granny Smith apple"])
    assert added == ("fruit", "Granny Smith apple")
    assert text == "A crisp red apple. Shows: fruit, Granny Smith apple."
    assert enhance("A crisp red apple.", ["apple"]) == ("A crisp red apple.", ())


# --- sieve ---------------------------------------------------------------------------------------

def test_sieve_drops_the_lowest_share():
    scores = sieve_scores([0.9, 0.1, 0.5, 0.7, 0.3], [[1, 1, 1, 1, 1]], quality_weight=0.5)
    assert list(sieve(scores, 0.4)) == [0, 2, 3]
    assert list(sieve(np.ones(4), 0.5)) == [0, 1]  # ties: later samples go first
    with pytest.raises(VitrineError):
        sieve(scores, 1.0)


# --- governed sets on a tiny store with trained towers -----------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Store, list[Pair]]:
    """Four drawn products, three cluttered photos of each, towers trained for a few epochs."""
    from vitrine.training import train_store

    root = tmp_path_factory.mktemp("govern")
    records = []
    for product_id, title, description, shape, colour, category in CATALOG:
        draw_product(root / "img" / f"{product_id}.png", shape, colour)
        records.append({"id": product_id, "title": f"<i>{title}</i> - Free Shipping",
                        "description": f"{description} Ships in a box.", "images": [f"img/{product_id}.png"]})
    (root / "products.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    store = Store.create(root / "store", Config.load(overrides={"encoders.threads": 2}))
    ingest(store, load_products(root / "products.jsonl"), progress=False)
    pairs = []
    for index, (product_id, *_rest, colour, _category) in enumerate(CATALOG):
        for shot, box in enumerate(OBJECT_BOXES):
            path = root / "photos" / f"{product_id}-{shot}.png"
            path.parent.mkdir(exist_ok=True)
            cluttered_photo(10 * index + shot, box, colour).save(path)
            pairs.append(Pair(product_id=product_id, query_image=str(path), query_key=str(path)))
        pairs.append(Pair(product_id=product_id, query_text=CATALOG[index][1].lower(), query_key=product_id))
    config = store.config({"training.epochs": 3, "training.dev_fraction": 0.0, "training.batch_size": 8,
                           "training.keyword_pairs": False})
    train_store(store, pairs, config=config, name="judge", progress=False)
    return store, pairs


def governance_config(store: Store, **overrides) -> Config:
    return store.config({"governance.model": "judge", "governance.tag_min_score": -1.0,
                         "governance.boilerplate_min_products": 3, "governance.crops": "replace", **overrides})


@pytest.fixture(scope="module")
def juiced(tiny):
    store, pairs = tiny
    return govern(store, pairs, mode="juice", name="juiced", source="drawn", config=governance_config(store),
                  progress=False)


def test_juice_writes_a_versioned_set_with_a_complete_audit_trail(tiny, juiced):
    store, pairs = tiny
    assert juiced.folder == store.root / "governed" / "juiced" / "v1"
    manifest = json.loads((juiced.folder / "manifest.json").read_text())
    assert manifest["source"]["pairs"] == len(pairs) and len(manifest["source"]["digest"]) == 64
    assert manifest["model"]["name"] == "judge" and manifest["mode"] == "juice"
    # Every sample and every product has before, after and why.
    samples = [e for e in juiced.audit if e.kind == "sample"]
    products = [e for e in juiced.audit if e.kind == "product"]
    assert [e.key for e in samples] == [str(i) for i in range(len(pairs))]
    assert sorted(e.key for e in products) == sorted(p[0] for p in CATALOG)
    assert all(e.before and e.after and e.why for e in juiced.audit)
    photo_entries = [e for e in samples if "box" in e.after]
    assert len(photo_entries) == 12
    assert all(e.after["classes"] and e.why[0].startswith("salient crop keeps") for e in photo_entries)
    # The set trains as it is: pairs point at the crops, which are smaller than the photos.
    written = pairs_jsonl(juiced.pairs_path)
    assert len(written) == len(pairs)
    crops = [Path(p.query_image) for p in written if p.query_image]
    assert all(c.parent == juiced.folder / "crops" and c.is_file() for c in crops)
    assert Image.open(crops[0]).size[0] * Image.open(crops[0]).size[1] < 320 * 240
    # Text branch: noise out, tags in, with the reason.
    by_id = {p.id: p for p in juiced.products}
    assert by_id["apple"].title == "Red Apple"
    assert "Shows:" in by_id["apple"].description
    apple = next(e for e in products if e.key == "apple")
    assert any(w.startswith("html") for w in apple.why) and any(w.startswith("promotional") for w in apple.why)
    assert any(w.startswith("enhanced with") for w in apple.why)
    assert manifest["counts"]["tokens_removed"] > 0 and manifest["counts"]["tokens_added"] > 0
    assert set(manifest["alignment"]) == {"before", "after"}


def test_same_inputs_and_seed_give_the_same_set_as_a_new_version(tiny, juiced):
    store, pairs = tiny
    again = govern(store, pairs, mode="juice", name="juiced", source="drawn", config=governance_config(store),
                   progress=False)
    assert again.manifest["version"] == 2
    assert again.manifest["output_digest"] == juiced.manifest["output_digest"]
    assert (again.folder / "products.jsonl").read_bytes() == (juiced.folder / "products.jsonl").read_bytes()


def test_crop_policies_add_the_crop_or_keep_whichever_the_judge_finds_closer(tiny, juiced):
    store, pairs = tiny
    photos = [p for p in pairs if p.query_image]
    added = govern(store, pairs, mode="juice", name="added", progress=False,  # the default policy
                   config=store.config({"governance.model": "judge"}))
    assert len(added.pairs) == len(pairs) + len(photos)  # every photo kept, its crop beside it
    assert {p.query_image for p in photos} <= {p.query_image for p in added.pairs}
    assert added.manifest["counts"]["crops_used"] == len(photos)
    # Read back as training data, each crop is one query with its photo (the same side of the dev split).
    keys = {p.query_image: p.query_key for p in pairs_jsonl(added.pairs_path) if p.query_image}
    crop_keys = [key for image, key in keys.items() if "/crops/" in image]
    assert sorted(crop_keys) == sorted(p.query_key for p in photos)
    better = govern(store, pairs, mode="juice", name="better",
                    config=governance_config(store, **{"governance.crops": "better"}), progress=False)
    assert len(better.pairs) == len(pairs)
    judge = Judge(store, governance_config(store), progress=False)
    catalog = {p.id: p for p in store.catalog}
    crops_by_photo = {p.query_key: p for p in juiced.pairs if p.query_image}
    for photo, kept in zip(photos, [p for p in better.pairs if p.query_image]):
        crop = crops_by_photo[photo.query_key]
        photo_score, crop_score = (float(judge.alignment([x], catalog)[0]) for x in (photo, crop))
        its_crop = str(better.folder / "crops" / Path(crop.query_image).name)
        assert kept.query_image == (its_crop if crop_score > photo_score else photo.query_image)
    with pytest.raises(VitrineError, match="governance.crops"):
        govern(store, pairs, mode="juice", config=governance_config(store, **{"governance.crops": "both"}), progress=False)


def test_a_limited_draw_depends_on_the_seed_only():
    pairs = [Pair(product_id=str(i)) for i in range(50)]
    assert sample_pairs(pairs, 5, seed=1) == sample_pairs(pairs, 5, seed=1)
    assert sample_pairs(pairs, 5, seed=1) != sample_pairs(pairs, 5, seed=2)
    assert sample_pairs(pairs, 0, seed=1) == pairs


def test_ray_and_local_juice_give_identical_sets(tiny, juiced, ray_engine):
    store, pairs = tiny
    remote = govern(store, pairs, mode="juice", name="parity-ray", source="drawn", config=governance_config(store),
                    engine=ray_engine, progress=False)
    assert remote.manifest["output_digest"] == juiced.manifest["output_digest"]
    assert (remote.folder / "audit.jsonl").read_bytes() == (juiced.folder / "audit.jsonl").read_bytes()


def test_sieve_drops_a_fifth_and_says_why(tiny):
    store, pairs = tiny
    sieved = govern(store, pairs, mode="sieve", name="sieved", config=governance_config(store), progress=False)
    dropped = [e for e in sieved.audit if e.kind == "sample" and e.after is None]
    assert len(dropped) == round(0.2 * len(pairs)) and len(sieved.pairs) == len(pairs) - len(dropped)
    assert all("dropped" in e.why[-1] and e.why[0].startswith("score") for e in dropped)


def test_query_side_juicing_crops_before_encoding(tiny, tmp_path):
    import vitrine

    store, _ = tiny
    engine = vitrine.open(store)
    engine.sync(progress=False)
    photo = cluttered_photo(99, (200, 120, 300, 220))
    timed = engine.search_timed(image=photo, k=2, options=SearchOptions(juice_query=True))
    assert "juice" in timed.timings and len(timed.hits) == 2
    assert "juice" not in engine.search_timed(image=photo, k=2, options=SearchOptions(juice_query=False)).timings


def test_cli_govern_writes_a_report_and_refuses_bad_input(tiny, tmp_path, monkeypatch):
    from vitrine.cli import app

    store, pairs = tiny
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"product_id": p.product_id, "query_image": p.query_image}) + "\n"
                            for p in pairs if p.query_image))
    runner = CliRunner()
    monkeypatch.chdir(store.root.parent)  # the store named by a relative path, as people type it
    ok = runner.invoke(app, ["govern", store.root.name, "--data", str(data), "--name", "cli", "--limit", "4",
                             "--set", "governance.model=judge"])
    assert ok.exit_code == 0, ok.output
    governed = [json.loads(line) for line in (store.root / "governed/cli/v1/products.jsonl").read_text().splitlines()]
    assert all(Path(image).is_absolute() and Path(image).is_file() for p in governed for image in p["images"])
    report = store.reports_dir / "govern-cli-v1.md"
    assert report.is_file() and (store.reports_dir / "govern-cli-v1.png").is_file()
    assert "Alignment" in report.read_text()
    bad = runner.invoke(app, ["govern", str(store.root), "--data", str(data), "--mode", "squeeze"])
    assert bad.exit_code == 2 and "unknown governance mode" in bad.output and "Traceback" not in bad.output
