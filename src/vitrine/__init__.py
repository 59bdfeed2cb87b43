"""vitrine: multi-modal product search.

>>> import vitrine
>>> engine = vitrine.open("store")
>>> engine.search(text="green apple", k=5)
"""

from __future__ import annotations

__version__ = "0.1.0"


def open(store, **overrides):  # noqa: A001 - the front door is meant to read like a file open
    """Open the search engine over the store at ``store``; see ``vitrine.engine.open``."""
    from vitrine.engine import open as open_engine

    return open_engine(store, **overrides)
