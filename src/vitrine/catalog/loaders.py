"""Dataset loaders. Each yields ``Sourced`` products (or ``BadRecord``s) and labelled queries.

Formats:

- ``grocery``: the Grocery Store Dataset layout (``classes.csv``, iconic images and descriptions,
  ``train.txt`` / ``val.txt`` photo lists).
- ``jsonl``: one product per line (see README, "Product JSONL"); image paths relative to the file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from vitrine.catalog.product import BadRecord, LabelledQuery, Product, Sourced
from vitrine.errors import DataError

Record = Sourced | BadRecord

PRODUCT_FIELDS = {"id", "title", "description", "attributes", "images", "group"}


def detect_format(path: Path) -> str:
    path = Path(path)
    if path.is_dir() and (_grocery_root(path) is not None):
        return "grocery"
    if path.suffix in {".jsonl", ".json", ".ndjson"}:
        return "jsonl"
    raise DataError(str(path), "cannot tell the format: expected a .jsonl file or a Grocery Store Dataset folder")


def load_products(path: Path, format: str = "auto") -> Iterator[Record]:
    """Products from ``path`` in the named format (``auto`` guesses from the path)."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "no such file or directory")
    kind = detect_format(path) if format == "auto" else format
    loaders: dict[str, Callable[[Path], Iterator[Record]]] = {"grocery": grocery_products, "jsonl": jsonl_products}
    if kind not in loaders:
        raise DataError(str(path), f"unknown format {kind!r} (choose from {', '.join(sorted(loaders))})")
    return loaders[kind](path)


def load_queries(path: Path, root: Path | None = None, format: str = "auto",
                 labelled: bool = True) -> list[LabelledQuery]:
    """Labelled queries: a Grocery photo list (``path, fine_id, coarse_id`` lines) or JSONL. With
    ``labelled=False`` a JSONL line may leave out ``relevant`` (a query log: the queries alone)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "no such query file")
    kind = format if format != "auto" else ("jsonl" if path.suffix in {".jsonl", ".ndjson"} else "grocery")
    if kind == "grocery":
        return grocery_queries(path, root or path.parent)
    if kind == "jsonl":
        return jsonl_queries(path, root or path.parent, labelled)
    raise DataError(str(path), f"unknown query format {kind!r} (choose from grocery, jsonl)")


# --- Grocery Store Dataset ---------------------------------------------------------------------

def _grocery_root(path: Path) -> Path | None:
    for candidate in (path, path / "dataset"):
        if (candidate / "classes.csv").is_file():
            return candidate
    return None


def grocery_products(path: Path) -> Iterator[Record]:
    """The 81 fine-grained classes as products: iconic image, description, coarse class."""
    root = _grocery_root(Path(path))
    if root is None:
        raise DataError(str(path), "no classes.csv: not a Grocery Store Dataset folder")
    classes = root / "classes.csv"
    with open(classes, newline="") as handle:
        for line_no, row in enumerate(csv.DictReader(handle), start=2):
            where = f"{classes}:{line_no}"
            try:
                yield Sourced(_grocery_product(root, row), where)
            except (KeyError, ValueError, OSError) as exc:
                yield BadRecord(where, f"malformed row ({type(exc).__name__}: {exc})")


def _grocery_product(root: Path, row: dict[str, str]) -> Product:
    name = row["Class Name (str)"].strip()
    iconic = row["Iconic Image Path (str)"].strip().lstrip("/")
    description_path = root / row["Product Description Path (str)"].strip().lstrip("/")
    description = description_path.read_text(encoding="utf-8").strip() if description_path.is_file() else ""
    return Product(
        id=name,
        title=name.replace("-", " "),
        description=description,
        attributes={
            "category": Path(iconic).parts[1] if len(Path(iconic).parts) > 1 else "",
            "coarse_class": row["Coarse Class Name (str)"].strip().replace("-", " "),
            "coarse_id": int(row["Coarse Class ID (int)"]),
            "fine_id": int(row["Class ID (int)"]),
        },
        images=(str(root / iconic),),
    )


def grocery_class_names(root: Path) -> dict[int, str]:
    """``fine_id → product id`` as the Grocery loader assigns them."""
    found = _grocery_root(Path(root))
    if found is None:
        return {}
    with open(found / "classes.csv", newline="") as handle:
        return {int(row["Class ID (int)"]): row["Class Name (str)"].strip() for row in csv.DictReader(handle)}


def grocery_queries(path: Path, root: Path) -> list[LabelledQuery]:
    """Photo queries from ``train.txt`` / ``val.txt``: each photo's product is its fine class."""
    names = grocery_class_names(root) or grocery_class_names(Path(path).parent)
    queries = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(where, "expected 'image_path, fine_id, coarse_id'")
        fine_id = int(parts[1])
        product_id = names.get(fine_id, str(fine_id))
        queries.append(LabelledQuery(relevant={product_id: 1}, image=str(Path(root) / parts[0]), where=where))
    return queries


# --- JSONL -------------------------------------------------------------------------------------

def jsonl_products(path: Path) -> Iterator[Record]:
    for where, record in _json_lines(path):
        if isinstance(record, BadRecord):
            yield record
            continue
        try:
            yield Sourced(_product_from_json(record, Path(path).parent), where)
        except DataError as exc:
            yield BadRecord(where, exc.reason)


def _product_from_json(record: dict[str, Any], base: Path) -> Product:
    unknown = set(record) - PRODUCT_FIELDS
    if unknown:
        raise DataError("", f"unknown field {sorted(unknown)[0]!r} (fields: {', '.join(sorted(PRODUCT_FIELDS))})")
    for name in ("id", "title"):
        if not isinstance(record.get(name), (str, int)) or not str(record[name]).strip():
            raise DataError("", f"missing field {name!r}")
    images = record.get("images", [])
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(item, str) for item in images):
        raise DataError("", "'images' must be a list of paths")
    attributes = record.get("attributes", {})
    if not isinstance(attributes, dict):
        raise DataError("", "'attributes' must be an object")
    description = record.get("description") or ""
    if not isinstance(description, str):
        raise DataError("", "'description' must be a string")
    group = record.get("group")
    return Product(
        id=str(record["id"]).strip(),
        title=str(record["title"]).strip(),
        description=description.strip(),
        attributes=attributes,
        images=tuple(str(base / image) for image in images),
        group=None if group is None else str(group),
    )


def jsonl_queries(path: Path, root: Path, labelled: bool = True) -> list[LabelledQuery]:
    queries = []
    for where, record in _json_lines(path):
        if isinstance(record, BadRecord):
            raise DataError(record.where, record.reason)
        relevant = record.get("relevant", None if labelled else {})
        if not isinstance(relevant, dict) or (labelled and not relevant):
            raise DataError(where, "missing field 'relevant' (an object of product_id: grade)")
        if not all(isinstance(grade, (int, float)) for grade in relevant.values()):
            raise DataError(where, "grades in 'relevant' must be numbers")
        text, image = record.get("text"), record.get("image")
        if not text and not image:
            raise DataError(where, "a query needs 'text', 'image' or both")
        queries.append(LabelledQuery(
            relevant={str(pid): int(grade) for pid, grade in relevant.items()},
            text=str(text) if text else None,
            image=str(Path(root) / image) if image else None,
            where=where,
        ))
    return queries


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any] | BadRecord]]:
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise DataError(str(path), f"cannot read ({exc.strerror})") from None
    line_no = 0
    with handle:
        try:
            for line_no, line in enumerate(handle, start=1):
                where = f"{path}:{line_no}"
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield where, BadRecord(where, f"bad JSON ({exc.msg} at column {exc.colno})")
                    continue
                yield where, record if isinstance(record, dict) else BadRecord(where, "expected a JSON object")
        except UnicodeDecodeError:
            raise DataError(f"{path}:{line_no + 1}", "not UTF-8 text") from None
