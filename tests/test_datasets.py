import csv
from pathlib import Path

import pytest

from conftest import write_jsonl
from test_loaders import make_grocery
from vitrine.catalog.datasets import crowdflower, load_splits, pairs_jsonl, shopee, split_keys
from vitrine.errors import DataError


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_split_keys_is_deterministic_and_disjoint():
    keys = [f"q{i}" for i in range(50)]
    train, val = split_keys(keys, 0.2, seed=0)
    assert len(val) == 10 and not train & val and train | val == set(keys)
    assert split_keys(list(reversed(keys)), 0.2, seed=0) == (train, val)
    assert split_keys(keys, 0.2, seed=1)[1] != val


def test_crowdflower_splits_by_query_with_graded_labels(tmp_path: Path):
    rows = []
    for q in range(10):
        for p in range(3):
            rows.append([len(rows), f"query {q}", f"Product {q}-{p}", "<b>desc</b>" if p else "", 4 - p, 0.0])
    rows.append([len(rows), "query 0", "Product 1-0", "", 2, 0.5])  # a product judged for two queries
    file = write_csv(tmp_path / "judgments.csv",
                     ["id", "query", "product_title", "product_description", "median_relevance", "relevance_variance"], rows)
    splits = crowdflower(tmp_path, val_fraction=0.2)
    assert len(splits.products) == 30
    val_queries = {q.text for q in splits.val}
    assert len(val_queries) == 2 and not val_queries & {p.query_text for p in splits.train}
    grades = {pair.grade for pair in splits.train}
    assert grades <= {1, 2, 3} and 3 in grades  # median_relevance - 1
    assert all(set(q.relevant.values()) <= {0, 1, 2, 3} for q in splits.val)
    assert crowdflower(file).val == splits.val  # the same split every time


def test_shopee_splits_by_group_and_excludes_the_query_listing(tmp_path: Path):
    rows = [[f"post{i}", f"Title number {i}", f"group{i // 3}"] for i in range(30)]
    write_csv(tmp_path / "listings.csv", ["posting_id", "title", "label_group"], rows)
    splits = shopee(tmp_path, val_fraction=0.2)
    val_groups = {q.where for q in splits.val}
    assert len(splits.val) == 6  # two groups of three listings
    query = splits.val[0]
    assert query.exclude[0] not in query.relevant and len(query.relevant) == 2
    train_products = {pair.product_id for pair in splits.train}
    assert not train_products & {pid for q in splits.val for pid in q.relevant}
    assert len(splits.train) == 8 * 3 * 2 and val_groups
    # Val listings are searchable, but their group (the val label) is not in the catalog for training to see.
    groups = {sourced.product.id: sourced.product.group for sourced in splits.products}
    assert all(groups[pid] is None for q in splits.val for pid in q.relevant)
    assert all(groups[pair.product_id] for pair in splits.train)


def test_grocery_new_products_protocol_holds_out_a_quarter(tmp_path: Path):
    dataset = make_grocery(tmp_path / "g")
    (dataset / "train.txt").write_text("val/Granny-Smith_001.jpg, 0, 0\nval/Oat-Milk_001.jpg, 1, 1\n")
    seen = load_splits(f"grocery:{tmp_path / 'g'}")
    assert not seen.held_out and len(seen.train) == 2
    rows = (dataset / "classes.csv").read_text().splitlines()
    (dataset / "classes.csv").write_text("\n".join([rows[0], rows[1], rows[2].replace(",1,Oat-Milk,1,", ",3,Oat-Milk,1,")]) + "\n")
    (dataset / "train.txt").write_text("val/Granny-Smith_001.jpg, 0, 0\nval/Oat-Milk_001.jpg, 3, 1\n")
    new = load_splits(f"grocery:{tmp_path / 'g'}", protocol="new")
    assert new.held_out == {"Oat-Milk"}
    assert [pair.product_id for pair in new.train] == ["Granny-Smith"]


def test_pairs_jsonl(tmp_path: Path):
    file = write_jsonl(tmp_path / "pairs.jsonl", [{"query_text": "oat milk", "product_id": "p1", "grade": 2},
                                                  {"query_image": "q.jpg", "product_id": "p2"},
                                                  {"query_image": "crop.jpg", "product_id": "p2", "query_key": "q.jpg"}])
    pairs = pairs_jsonl(file)
    assert pairs[0].grade == 2 and pairs[1].grade == 3
    assert pairs[1].query_image == str(tmp_path / "q.jpg")
    assert [p.query_key for p in pairs] == ["oat milk", "q.jpg", "q.jpg"]  # the crop is one query with its photo
    keyless = write_jsonl(tmp_path / "keyless.jsonl", [{"query_text": "x", "product_id": "p1", "query_key": 7}])
    with pytest.raises(DataError, match=r"keyless\.jsonl:1: 'query_key' must be a non-empty string"):
        pairs_jsonl(keyless)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query_text": "x"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: missing field 'product_id'"):
        pairs_jsonl(bad)
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_splits(f"imagenet:{tmp_path}")
