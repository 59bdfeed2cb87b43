"""Where an evaluation's misses go: which product was ranked first instead of the one a query was about, and which
products are found first least often. A search engineer reads these before any metric: "photos of kiwis come back
as onions" says what to fix; "recall@1 0.66" does not."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class Ranked(Protocol):
    relevant: dict[str, int]
    ranked: list[str]


@dataclass
class Confusion:
    wanted: str
    """The product the queries were about (their only exact match)."""
    given: str
    """The product ranked first instead."""
    queries: int
    wanted_title: str = ""
    given_title: str = ""


@dataclass
class ProductRecall:
    product: str
    title: str
    queries: int
    """Queries whose only exact match is this product."""
    first: int
    """Of those, how many ranked it first."""
    instead: str = ""
    """The product most often ranked first in its place."""
    instead_title: str = ""


def top_graded(relevant: Mapping[str, int]) -> set[str]:
    """The products with the highest positive grade: a query's exact matches."""
    top = max((grade for grade in relevant.values() if grade > 0), default=None)
    return {pid for pid, grade in relevant.items() if top is not None and grade == top}


def _wanted(result: Ranked) -> str | None:
    """The one product a query is about, or None when it has several exact matches (a graded text query): a
    confusion is between two products, and a query about many names no single one."""
    matches = top_graded(result.relevant)
    return next(iter(matches)) if len(matches) == 1 else None


def _misses(results: Sequence[Ranked]) -> Counter[tuple[str, str]]:
    return Counter((wanted, result.ranked[0]) for result in results
                   if (wanted := _wanted(result)) is not None and result.ranked and result.ranked[0] != wanted)


def confusions(results: Sequence[Ranked], title: Callable[[str], str] = str, top: int = 10) -> list[Confusion]:
    """The ``top`` most frequent (wanted, ranked first instead) pairs over single-match queries, most frequent first."""
    return [Confusion(wanted, given, count, title(wanted), title(given))
            for (wanted, given), count in _misses(results).most_common(top)]


def hardest_products(results: Sequence[Ranked], title: Callable[[str], str] = str,
                     top: int = 10) -> list[ProductRecall]:
    """The ``top`` products least often ranked first by the single-match queries about them (lowest share first;
    ties: more queries first), leaving out those every query found."""
    asked = Counter(wanted for result in results if (wanted := _wanted(result)) is not None)
    missed = _misses(results)
    missed_per_product = Counter[str]()
    instead: dict[str, str] = {}
    for (wanted, given), count in missed.most_common():
        missed_per_product[wanted] += count
        instead.setdefault(wanted, given)
    rows = [ProductRecall(product, title(product), queries, queries - missed_per_product[product], instead[product],
                          title(instead[product]))
            for product, queries in asked.items() if missed_per_product[product]]
    rows.sort(key=lambda row: (row.first / row.queries, -row.queries, row.product))
    return rows[:top]
