"""Which rerankers this server offers, and the one check every route makes of a ``rerank`` value.

A store offers reranking once it holds a trained reranker (``vitrine train-reranker`` saves it as
``models/<rerank.model>``); then every strategy of ``vitrine.rerank`` can be asked for by name.
"""

from __future__ import annotations

from vitrine.engine import SearchEngine
from vitrine.errors import VitrineError
from vitrine.rerank.reranker import STRATEGIES

NONE = "none"


def available(engine: SearchEngine) -> list[str]:
    """Reranking choices for this store, ``none`` first, then ``hybrid`` (the default strategy) and the rest."""
    if not (engine.store.models_dir / engine.config.rerank.model / "config.json").is_file():
        return [NONE]
    return [NONE, "hybrid", *sorted(name for name in STRATEGIES if name != "hybrid")]


def checked(value: str | None, engine: SearchEngine) -> str:
    """``value`` if this store offers it; else a ``VitrineError`` (answered 400) saying what is offered."""
    choice = (value or NONE).strip().lower()
    offered = available(engine)
    if choice not in offered:
        if offered == [NONE]:
            raise VitrineError(f"rerank={value!r} is not available: no reranker in this store (use rerank=none)")
        raise VitrineError(f"rerank={value!r} is not available; this store offers: {', '.join(offered)}")
    return choice


def engine_choice(choice: str) -> str | None:
    """What the engine takes: a strategy name, or None for no reranking."""
    return None if choice == NONE else choice
