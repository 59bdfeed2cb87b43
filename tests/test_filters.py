"""The filter language: parsing, and the catalog's SQL and Milvus's expressions agreeing with the Python predicate."""

from pathlib import Path

import numpy as np
import pytest

from vitrine.catalog import Catalog, Filter, FilterError, Product, filter_document
from vitrine.config import IndexConfig
from vitrine.index import MilvusIndex

PRODUCTS = [
    Product("apple", "Apple", attributes={"category": "Fruit", "price": 3, "organic": True}),
    Product("melon", "Melon", attributes={"category": "Fruit", "price": 25.5}),
    Product("pear", "Pear", attributes={"category": "Fruit", "price": "12"}),  # a price held as text
    Product("mug", "Mug", attributes={"category": "Kitchen", "price": 9, "tags": "gift"}, group="g1"),
    Product("pan", "Pan", attributes={"category": "Kitchen", "price": 40, "organic": False}),
    Product("cone", "Cone", attributes={}),
]

FILTERS = [
    'category == "Fruit" and price < 20',
    "category == 'Fruit' or price >= 40",
    'not (category == "Fruit")',
    'category != "Fruit"',
    'category in ["Kitchen", "Toys"] and price <= 9',
    "organic == true",
    "not organic == true",
    "price > 3.5 and price < 30",
    'id == "cone" or group == "g1"',
    'NOT category IN ["Fruit"] AND (price > 0 OR tags == "gift")',
]


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog.upsert(PRODUCTS)
    return catalog


@pytest.mark.parametrize("text", FILTERS)
def test_sql_and_python_agree(catalog: Catalog, text: str):
    parsed = Filter.parse(text)
    by_sql = {catalog.by_keys([int(key)])[int(key)].id for key in catalog.keys_matching(parsed)}
    by_python = {product.id for product in PRODUCTS if parsed.matches(product)}
    assert by_sql == by_python


def test_types_must_match(catalog: Catalog):
    # "12" is text: a numeric comparison does not see it, a string one does.
    numeric = Filter.parse("price < 20")
    assert {p.id for p in PRODUCTS if numeric.matches(p)} == {"apple", "mug"}
    assert len(catalog.keys_matching(Filter.parse('price == "12"'))) == 1


@pytest.mark.parametrize("text, where", [
    ("", "empty"),
    ("category ==", "expected a value at the end"),
    ('category = "x"', "column 10"),
    ('category == "x" and', "expected a field name at the end"),
    ("(price < 3", "expected ')'"),
    ("price in [1, 2", "expected ']'"),
    ("price < abc", "expected a number"),
    ("and == 3", "expected a field name at column 1"),
])
def test_bad_filters_say_where(text: str, where: str):
    with pytest.raises(FilterError, match=where.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        Filter.parse(text)


def test_milvus_expression_reads_typed_keys():
    expression = Filter.parse('category == "Fruit" and not (price >= 20 or id in ["x"])').milvus()
    assert expression == ('((exists attributes["s:category"] and attributes["s:category"] == "Fruit") and '
                          '(not ((exists attributes["n:price"] and attributes["n:price"] >= 20) or '
                          '((exists attributes["s@id"] and attributes["s@id"] == "x")))))')
    assert filter_document(PRODUCTS[3]) == {"s@id": "mug", "s@group": "g1", "s:category": "Kitchen", "n:price": 9,
                                            "s:tags": "gift"}
    assert filter_document(Product("x", "X", attributes={"list": [1], "none": None, "flag": False})) == \
        {"s@id": "x", "b:flag": False}


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory):
    index = MilvusIndex(4, IndexConfig(uri="filters.db"), tmp_path_factory.mktemp("milvus"))
    index.add(np.arange(len(PRODUCTS)), np.eye(4, dtype=np.float32)[np.arange(len(PRODUCTS)) % 4],
              [filter_document(product) for product in PRODUCTS])
    yield index
    index.close()


@pytest.mark.parametrize("text", FILTERS + ["organic == 1", "price != 9", "price in [3, 40]", "not tags == 'gift'"])
def test_milvus_and_python_agree(milvus: MilvusIndex, text: str):
    """Milvus alone would compare across types (1 == true) and treat a missing field as NULL under ``not``."""
    parsed = Filter.parse(text)
    _, found = milvus.search(np.ones((1, 4), dtype=np.float32), len(PRODUCTS), where=parsed)
    by_milvus = {PRODUCTS[key].id for key in found[0].tolist() if key >= 0}
    assert by_milvus == {product.id for product in PRODUCTS if parsed.matches(product)}
