"""Relevance levels (Pailitao-VL): 0 instance match, 1 concept match, 2 functional match, 3 irrelevant.

Lower is better, unlike vitrine's grades (0-3, 3 = exact match) that NDCG uses as gains; ``from_grade``
and ``to_gain`` convert. How each dataset maps onto the four levels:

- Grocery: the same product = 0, the same coarse class (another apple) = 1, the same top category
  (Fruit, Vegetables, Packages) = 2, anything else = 3.
- CrowdFlower: median relevance 4 → 0, 3 → 1, 2 → 2, 1 → 3 (vitrine grade g = relevance − 1 → 3 − g).
- Shopee: a listing of the same group = 0, anything else = 3 (the data has no finer grades).
- JSONL grades (``{"relevant": {"sku": grade}}``, 0-3 with 3 = exact): level = 3 − grade.

A product the labels do not mention is irrelevant (3): in top-K lists from a retriever that is what an
unjudged candidate nearly always is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vitrine.catalog.product import Product

INSTANCE, CONCEPT, FUNCTIONAL, IRRELEVANT = 0, 1, 2, 3
LEVELS = 4
NAMES = ("instance", "concept", "functional", "irrelevant")


def from_grade(grade: float) -> int:
    """vitrine grade (0-3, 3 = exact match) → level."""
    return IRRELEVANT - max(0, min(3, int(grade)))


def to_gain(level: int) -> int:
    """Level → NDCG gain on vitrine's grade scale."""
    return IRRELEVANT - int(level)


def from_crowdflower(median_relevance: int) -> int:
    """CrowdFlower's median relevance (1-4, 4 = perfect) → level."""
    if not 1 <= int(median_relevance) <= 4:
        raise ValueError(f"CrowdFlower relevance is 1-4, got {median_relevance}")
    return 4 - int(median_relevance)


def grocery_levels(target: Product, catalog: Iterable[Product]) -> dict[str, int]:
    """Every product's level for a photo of ``target``, from the catalog's hierarchy attributes."""
    levels = {}
    coarse, category = target.attributes.get("coarse_class"), target.attributes.get("category")
    for product in catalog:
        if product.id == target.id:
            levels[product.id] = INSTANCE
        elif coarse and product.attributes.get("coarse_class") == coarse:
            levels[product.id] = CONCEPT
        elif category and product.attributes.get("category") == category:
            levels[product.id] = FUNCTIONAL
        else:
            levels[product.id] = IRRELEVANT
    return levels


def group_levels(target: Product, catalog: Iterable[Product]) -> dict[str, int]:
    """Shopee: listings of ``target``'s group are instance matches, the rest irrelevant."""
    return {p.id: INSTANCE for p in catalog if p.id == target.id or (target.group and p.group == target.group)}


def graded_levels(relevant: Mapping[str, float]) -> dict[str, int]:
    """Levels from vitrine grades (CrowdFlower after loading, JSONL): only the judged products."""
    return {pid: from_grade(grade) for pid, grade in relevant.items()}


def levels_for(dataset: str, relevant: Mapping[str, float], products: Mapping[str, Product]) -> dict[str, int]:
    """The levels of one labelled query, by dataset name (``grocery-*``, ``shopee``, anything else graded).

    Grocery and Shopee label a query with its product(s); the hierarchy or the group gives the rest.
    """
    if dataset.startswith("grocery"):
        levels: dict[str, int] = {}
        for pid in relevant:
            for other, level in grocery_levels(products[pid], products.values()).items():
                levels[other] = min(level, levels.get(other, IRRELEVANT))
        return levels
    if dataset == "shopee":
        return {pid: INSTANCE for pid, grade in relevant.items() if grade > 0}
    return graded_levels(relevant)


def level_of(levels: Mapping[str, int], product_id: str) -> int:
    return levels.get(product_id, IRRELEVANT)
