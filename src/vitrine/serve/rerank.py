"""Which rerankers this server offers, and the one check every route makes of a ``rerank`` value.

The reranking stage (``vitrine.rerank``) is not part of this build: only ``none`` is offered. When it
lands, ``available`` lists its strategies and ``run_search`` passes the choice to the engine.
"""

from __future__ import annotations

from vitrine.engine import SearchEngine
from vitrine.errors import VitrineError

NONE = "none"


def available(engine: SearchEngine) -> list[str]:
    """Reranking choices for this store, ``none`` first."""
    return [NONE]


def checked(value: str | None, engine: SearchEngine) -> str:
    """``value`` if this store offers it; else a ``VitrineError`` (answered 400) saying what is offered."""
    choice = (value or NONE).strip().lower()
    offered = available(engine)
    if choice not in offered:
        if offered == [NONE]:
            raise VitrineError(f"rerank={value!r} is not available: no reranker in this store (use rerank=none)")
        raise VitrineError(f"rerank={value!r} is not available; this store offers: {', '.join(offered)}")
    return choice
