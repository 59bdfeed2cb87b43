"""Business signals in the score: one documented formula over numeric product attributes.

    final = score + Σ_f  w_f · log1p(max(x_f, 0))

``x_f`` is the product's numeric attribute ``f`` (missing or not a number counts as 0); ``w_f`` is the
weight given for it: positive to favour (``popularity=0.05``), negative to penalise (``price=-0.02``).
``log1p`` keeps a field's effect growing ever more slowly, so one product with 10^6 sales does not
bury every better match. Modifiers re-order the ``search.modifier_depth`` best retrieved candidates;
they never bring in products the retrieval did not find.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from vitrine.errors import VitrineError


def parse_modifiers(items: list[str], flag: str = "--boost") -> dict[str, float]:
    """``["popularity=0.05", "price=-0.02"]`` → ``{"popularity": 0.05, "price": -0.02}`` (CLI ``--boost``)."""
    weights: dict[str, float] = {}
    for item in items:
        field, sep, weight = item.partition("=")
        try:
            if not sep or not field.strip():
                raise ValueError(item)
            weights[field.strip()] = float(weight)
        except ValueError:
            raise VitrineError(f"{flag} expects NAME=NUMBER (like popularity=0.05), got {item!r}") from None
    return weights


def checked_modifiers(modifiers: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for field, weight in (modifiers or {}).items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
            raise VitrineError(f"modifier {field!r}: weight must be a finite number, got {weight!r}")
        out[str(field)] = float(weight)
    return out


def modifier_bonus(attributes: Mapping[str, Any], modifiers: Mapping[str, float]) -> float:
    """Σ_f w_f · log1p(max(x_f, 0)) for one product's attributes."""
    bonus = 0.0
    for field, weight in modifiers.items():
        value = attributes.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        bonus += weight * math.log1p(max(float(value), 0.0))
    return bonus
