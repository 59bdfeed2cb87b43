import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import draw_product, write_jsonl
from vitrine.catalog import BadRecord, Store, ingest, load_products, load_queries
from vitrine.errors import DataError


def test_jsonl_products_resolve_images_relative_to_the_file(catalog_file: Path):
    records = list(load_products(catalog_file))
    assert [r.product.id for r in records] == ["apple", "mug", "scarf", "cone"]
    assert records[0].product.images == (str(catalog_file.parent / "img" / "apple.png"),)
    assert records[0].product.attributes == {"category": "Fruit"}
    assert records[1].where == f"{catalog_file}:2"


def test_ingest_copies_images_by_content(tmp_path: Path, catalog_file: Path):
    store = Store.create(tmp_path / "store")
    report = ingest(store, load_products(catalog_file), progress=False)
    assert (report.added, report.skipped) == (4, [])
    stored = store.catalog.get("apple")
    assert stored.images[0].startswith("images/") and stored.images[0].endswith(".png")
    assert store.resolve(stored.images[0]).read_bytes() == (catalog_file.parent / "img" / "apple.png").read_bytes()
    again = ingest(store, load_products(catalog_file), progress=False)
    assert (again.added, again.unchanged) == (0, 4)


def test_identical_images_are_stored_once(tmp_path: Path):
    draw_product(tmp_path / "a.png", "circle", (1, 2, 3))
    draw_product(tmp_path / "b.png", "circle", (1, 2, 3))
    source = write_jsonl(tmp_path / "p.jsonl", [{"id": "1", "title": "x", "images": ["a.png"]},
                                                {"id": "2", "title": "y", "images": ["b.png"]}])
    store = Store.create(tmp_path / "s")
    ingest(store, load_products(source), progress=False)
    assert store.catalog.get("1").images == store.catalog.get("2").images
    assert len(list(store.images_dir.rglob("*.png"))) == 1


BAD_CASES = [
    ('{"id": "a", "title": "A"', "bad JSON"),
    ('{"title": "no id"}', "missing field 'id'"),
    ('{"id": "a", "title": "  "}', "missing field 'title'"),
    ('{"id": "a", "title": "A", "images": ["nope.jpg"]}', "image not found"),
    ('{"id": "a", "title": "A", "images": ["broken.jpg"]}', "broken.jpg: not a readable image"),
    ('{"id": "a", "title": "A", "colour": "red"}', "unknown field 'colour'"),
    ('[1, 2]', "expected a JSON object"),
    ('{"id": "a", "title": "A", "attributes": [1]}', "'attributes' must be an object"),
]


@pytest.mark.parametrize("line, message", BAD_CASES)
def test_bad_record_stops_with_file_and_line(tmp_path: Path, line: str, message: str):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    source = tmp_path / "p.jsonl"
    source.write_text('{"id": "ok", "title": "Fine"}\n' + line + "\n")
    store = Store.create(tmp_path / "s")
    with pytest.raises(DataError) as caught:
        ingest(store, load_products(source), progress=False)
    assert str(caught.value).startswith(f"{source}:2: ")
    assert message in str(caught.value)
    assert len(store.catalog) == 0  # nothing half-done


def test_duplicate_id_names_the_second_line(tmp_path: Path):
    source = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "title": "A"}, {"id": "a", "title": "B"}])
    with pytest.raises(DataError, match=r"p\.jsonl:2: duplicate product id 'a'"):
        ingest(Store.create(tmp_path / "s"), load_products(source), progress=False)


def test_truncated_image_is_refused(tmp_path: Path):
    draw_product(tmp_path / "full.jpg", "circle", (9, 9, 9), size=400)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    source = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "title": "A", "images": ["cut.jpg"]}])
    with pytest.raises(DataError, match=r"p\.jsonl:1: .*cut\.jpg: broken image data"):
        ingest(Store.create(tmp_path / "s"), load_products(source), progress=False)


def test_oversized_image_is_refused_before_decoding(tmp_path: Path):
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    source = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "title": "A", "images": ["big.png"]}])
    with pytest.raises(DataError, match="more than the limit"):
        ingest(Store.create(tmp_path / "s"), load_products(source), progress=False, max_pixels=50_000)


def test_skip_bad_counts_and_keeps_the_good(tmp_path: Path):
    draw_product(tmp_path / "ok.png", "square", (0, 0, 255))
    source = tmp_path / "p.jsonl"
    source.write_text("\n".join([
        json.dumps({"id": "1", "title": "good", "images": ["ok.png"]}),
        "{not json",
        json.dumps({"id": "2", "title": "no image", "images": ["missing.png"]}),
        json.dumps({"id": "1", "title": "dup"}),
        json.dumps({"id": "3", "title": "good too"}),
    ]) + "\n")
    store = Store.create(tmp_path / "s")
    report = ingest(store, load_products(source), skip_bad=True, progress=False)
    assert report.added == 2
    assert [bad.where for bad in report.skipped] == [f"{source}:2", f"{source}:3", f"{source}:4"]
    assert all(isinstance(bad, BadRecord) for bad in report.skipped)
    assert sorted(p.id for p in store.catalog) == ["1", "3"]


def test_non_utf8_file_is_a_clear_error(tmp_path: Path):
    source = tmp_path / "p.jsonl"
    source.write_bytes(b'{"id": "1", "title": "ok"}\n\xff\xfe\x00garbage\n')
    with pytest.raises(DataError, match="not UTF-8"):
        list(load_products(source))


def make_grocery(root: Path) -> Path:
    """A two-class Grocery Store Dataset layout, drawn."""
    dataset = root / "dataset"
    rows = ["Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
            "Iconic Image Path (str),Product Description Path (str)"]
    for fine, (name, coarse, shape, colour) in enumerate([("Granny-Smith", "Apple", "circle", (80, 200, 60)),
                                                          ("Oat-Milk", "Oat-Milk", "square", (230, 230, 200))]):
        category = "Fruit" if coarse == "Apple" else "Packages"
        folder = f"iconic-images-and-descriptions/{category}/{coarse}/{name}"
        draw_product(dataset / folder / f"{name}_Iconic.jpg", shape, colour)
        (dataset / folder / f"{name}_Description.txt").write_text(f"All about {name}.\n")
        rows.append(f"{name},{fine},{coarse},{fine},/{folder}/{name}_Iconic.jpg,/{folder}/{name}_Description.txt")
        draw_product(dataset / "val" / f"{name}_001.jpg", shape, colour, background=(90, 60, 40))
    (dataset / "classes.csv").write_text("\n".join(rows) + "\n")
    (dataset / "val.txt").write_text("val/Granny-Smith_001.jpg, 0, 0\nval/Oat-Milk_001.jpg, 1, 1\n")
    return dataset


def test_grocery_layout(tmp_path: Path):
    dataset = make_grocery(tmp_path / "grocery")
    products = [r.product for r in load_products(tmp_path / "grocery")]
    assert [p.id for p in products] == ["Granny-Smith", "Oat-Milk"]
    assert products[0].title == "Granny Smith"
    assert products[0].description == "All about Granny-Smith."
    assert products[0].attributes == {"category": "Fruit", "coarse_class": "Apple", "coarse_id": 0, "fine_id": 0}
    queries = load_queries(dataset / "val.txt", dataset)
    assert [q.relevant for q in queries] == [{"Granny-Smith": 1}, {"Oat-Milk": 1}]
    assert queries[1].image == str(dataset / "val" / "Oat-Milk_001.jpg")


def test_jsonl_queries(tmp_path: Path):
    source = write_jsonl(tmp_path / "q.jsonl", [{"text": "apple", "relevant": {"a": 2, "b": 1}},
                                                {"image": "x.png", "relevant": {"c": 1}}])
    queries = load_queries(source)
    assert queries[0].text == "apple" and queries[0].relevant == {"a": 2, "b": 1}
    assert queries[1].image == str(tmp_path / "x.png")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "apple"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: missing field 'relevant'"):
        load_queries(bad)


def test_unknown_format_and_missing_path(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        load_products(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_products(tmp_path / "x.csv")
