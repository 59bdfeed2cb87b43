"""Benchmark datasets as splits: products to ingest, training pairs, and labelled val queries.

Every split is deterministic (a fixed seed, stable across machines), and held-out queries or groups
never appear in training pairs. ``load_splits("grocery:PATH")`` picks a dataset by name.

- ``grocery``: Grocery Store Dataset. Products are the 81 classes; pairs are the train photos; val
  queries the val photos. Protocol ``new`` holds out products with ``fine_id % 4 == 3``: their photos,
  names, descriptions and images are never trained on (``held_out`` lists them).
- ``crowdflower``: CrowdFlower search relevance. Products are the distinct judged (title,
  description) pairs; queries split 80/20 by query; grades are ``median_relevance - 1`` (0-3).
- ``shopee``: Shopee titles. Products are listings grouped by ``label_group``; groups split 80/20;
  a val query is a listing's title, relevant = the other listings of its group. Val listings are in
  the catalog without their group: it is the val label, and training (its false-negative mask, its
  prototypes) must not see it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vitrine.catalog.loaders import grocery_class_names, grocery_products, grocery_queries, _grocery_root
from vitrine.catalog.product import LabelledQuery, Pair, Product, Sourced
from vitrine.errors import DataError

SEED = 0
VAL_FRACTION = 0.2


@dataclass
class Splits:
    name: str
    products: list[Sourced]
    train: list[Pair]
    val: list[LabelledQuery]
    held_out: set[str] = field(default_factory=set)
    """Products whose data must not be used in training (the new-products protocol)."""


def load_splits(spec: str, *, protocol: str = "seen", seed: int = SEED) -> Splits:
    """``name:path`` → that dataset's splits; a bare ``.jsonl`` path is a file of pairs (no val split)."""
    name, sep, path = spec.partition(":")
    if not sep:
        name, path = ("pairs", spec) if spec.endswith((".jsonl", ".ndjson")) else (spec, "")
    loaders = {"grocery": lambda p: grocery(p, protocol=protocol), "crowdflower": lambda p: crowdflower(p, seed=seed),
               "shopee": lambda p: shopee(p, seed=seed), "pairs": lambda p: Splits("pairs", [], pairs_jsonl(p), [])}
    if name not in loaders:
        raise DataError(spec, f"unknown dataset {name!r} (choose from {', '.join(loaders)}, or a pairs .jsonl)")
    if not Path(path).exists():
        raise DataError(spec, "no such file or directory")
    return loaders[name](Path(path))


def split_keys(keys: Sequence[str], val_fraction: float = VAL_FRACTION, seed: int = SEED) -> tuple[set[str], set[str]]:
    """Deterministically split distinct keys into (train, val)."""
    ordered = sorted(set(keys))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ordered))
    n_val = max(1, round(val_fraction * len(ordered)))
    val = {ordered[i] for i in order[:n_val]}
    return set(ordered) - val, val


# --- Grocery ------------------------------------------------------------------------------------

def grocery_held_out(fine_id: int) -> bool:
    """The new-products protocol: a quarter of the products, spread over every category."""
    return fine_id % 4 == 3


def grocery(path: Path, protocol: str = "seen") -> Splits:
    if protocol not in {"seen", "new"}:
        raise DataError(str(path), f"unknown Grocery protocol {protocol!r} (seen or new)")
    root = _grocery_root(Path(path))
    if root is None:
        raise DataError(str(path), "no classes.csv: not a Grocery Store Dataset folder")
    names = grocery_class_names(root)
    held_out = {name for fine_id, name in names.items() if protocol == "new" and grocery_held_out(fine_id)}
    train = [Pair(product_id=next(iter(q.relevant)), query_image=q.image, query_key=q.where)
             for q in grocery_queries(root / "train.txt", root) if next(iter(q.relevant)) not in held_out]
    return Splits(f"grocery-{protocol}", list(grocery_products(root)), train,
                  grocery_queries(root / "val.txt", root), held_out)


# --- CrowdFlower --------------------------------------------------------------------------------

def crowdflower_product_id(title: str, description: str) -> str:
    return "cf-" + hashlib.sha1(f"{title}\x00{description}".encode()).hexdigest()[:16]


def crowdflower(path: Path, val_fraction: float = VAL_FRACTION, seed: int = SEED) -> Splits:
    file = Path(path) / "judgments.csv" if Path(path).is_dir() else Path(path)
    rows = _csv_rows(file, {"query", "product_title", "product_description", "median_relevance"})
    products: dict[str, Sourced] = {}
    judged: dict[str, dict[str, int]] = defaultdict(dict)
    for where, row in rows:
        title, description = row["product_title"].strip(), row["product_description"].strip()
        pid = crowdflower_product_id(title, description)
        products.setdefault(pid, Sourced(Product(pid, title or "(untitled)", description), where))
        judged[row["query"].strip()][pid] = int(row["median_relevance"]) - 1
    train_queries, val_queries = split_keys(list(judged), val_fraction, seed)
    train = [Pair(product_id=pid, query_text=query, grade=grade, query_key=query)
             for query in sorted(train_queries) for pid, grade in judged[query].items()]
    val = [LabelledQuery(relevant=judged[query], text=query, where=f"{file}:{query}") for query in sorted(val_queries)]
    return Splits("crowdflower", list(products.values()), train, val)


# --- Shopee -------------------------------------------------------------------------------------

def shopee(path: Path, val_fraction: float = VAL_FRACTION, seed: int = SEED) -> Splits:
    file = Path(path) / "listings.csv" if Path(path).is_dir() else Path(path)
    rows = _csv_rows(file, {"posting_id", "title", "label_group"})
    products = [Sourced(Product(row["posting_id"], row["title"].strip() or "(untitled)", group=row["label_group"]), where)
                for where, row in rows]
    members: dict[str, list[Product]] = defaultdict(list)
    for sourced in products:
        members[sourced.product.group or ""].append(sourced.product)
    train_groups, val_groups = split_keys(list(members), val_fraction, seed)
    held = set(val_groups)
    products = [replace(sourced, product=replace(sourced.product, group=None)) if sourced.product.group in held
                else sourced for sourced in products]
    train = [Pair(product_id=other.id, query_text=listing.title, query_key=listing.id)
             for group in sorted(train_groups) for listing in members[group] for other in members[group]
             if other.id != listing.id]
    val = [LabelledQuery(relevant={other.id: 1 for other in members[group] if other.id != listing.id},
                         text=listing.title, where=f"{file}:{listing.id}", exclude=(listing.id,))
           for group in sorted(val_groups) if len(members[group]) > 1 for listing in members[group]]
    return Splits("shopee", products, train, val)


# --- generic pairs ------------------------------------------------------------------------------

def pairs_jsonl(path: Path) -> list[Pair]:
    """``{"query_text"?, "query_image"?, "product_id", "grade"?, "query_key"?}`` per line; images relative
    to the file. Pairs with the same ``query_key`` (default: the text, else the image) are one query: they
    fall on the same side of the dev split, and mask each other's products as negatives."""
    pairs = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(where, f"bad JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not record.get("product_id"):
            raise DataError(where, "missing field 'product_id'")
        text, image = record.get("query_text"), record.get("query_image")
        if not text and not image:
            raise DataError(where, "a pair needs 'query_text', 'query_image' or both")
        grade = record.get("grade", 3)
        if not isinstance(grade, int) or not 0 <= grade <= 3:
            raise DataError(where, "'grade' must be an integer from 0 to 3")
        key = record.get("query_key", text or image)
        if not isinstance(key, str) or not key:
            raise DataError(where, "'query_key' must be a non-empty string")
        pairs.append(Pair(product_id=str(record["product_id"]), query_text=text or None,
                          query_image=str(Path(path).parent / image) if image else None, grade=grade,
                          query_key=key))
    return pairs


def _csv_rows(file: Path, required: set[str]) -> list[tuple[str, dict[str, str]]]:
    if not file.is_file():
        raise DataError(str(file), "no such file")
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{file}:1", f"missing column {sorted(missing)[0]!r}")
        return [(f"{file}:{reader.line_num}", row) for row in reader]
