"""Which search channels this server offers, and the one check every route makes of a ``channel`` value.

``vector`` ranks products by their embeddings; ``prototype`` (ID recognition: query -> nearest prototypes ->
their products, for exact-product lookup) is offered once the store's towers (every model it serves) were
trained with ``--objective prototype`` and so have a prototype head.
"""

from __future__ import annotations

from vitrine.engine import SearchEngine
from vitrine.engine.prototype_channel import CHANNELS
from vitrine.errors import VitrineError

VECTOR = "vector"


def checked(value: str | None, engine: SearchEngine) -> str:
    """``value`` if this store offers it; else a ``VitrineError`` (answered 400) saying what is offered."""
    choice = (value or VECTOR).strip().lower()
    if choice == VECTOR:  # every store serves it: no look at the model folder on the common path
        return choice
    offered = engine.channels()
    if choice not in offered:
        why = ("a served model has no prototype head (train it with --objective prototype)"
               if choice in CHANNELS else f"this store offers: {', '.join(offered)}")
        raise VitrineError(f"channel={value!r} is not available: {why}")
    return choice
