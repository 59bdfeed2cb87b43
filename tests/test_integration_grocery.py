"""One end-to-end run on the real Grocery Store Dataset (../shared/data), kept under a minute."""

from pathlib import Path

import vitrine
from vitrine.catalog import Store, ingest, load_products, load_queries
from vitrine.config import data_dir
from vitrine.evaluation import evaluate


def test_photo_search_on_real_grocery_photos(tmp_path: Path):
    root = data_dir() / "grocery-store" / "dataset"
    assert (root / "classes.csv").is_file(), f"Grocery Store Dataset not found under {root} (set VITRINE_DATA)"
    store = Store.create(tmp_path / "grocery")
    report = ingest(store, load_products(root), progress=False)
    assert report.added == 81 and not report.skipped

    engine = vitrine.open(store)
    engine.sync(progress=False)
    queries = load_queries(root / "val.txt", root)[::3]  # 99 of the 296 val photos
    result = evaluate(engine, queries, name="grocery-val-subset", progress=False)

    # Zero-shot ImageNet features: measured R@1 0.36 and R@5 0.68 on all 296 (chance: 0.012 and 0.06).
    assert result.metrics["recall@1"] > 0.25
    assert result.metrics["recall@5"] > 0.55
    assert result.unknown_products == 0
    hits = engine.search(text="oat milk", k=3)
    assert hits[0].product.id == "Oatly-Oat-Milk"
