"""Vector indexes behind one interface, chosen by name from config."""

from pathlib import Path

from vitrine.config import IndexConfig
from vitrine.index.base import VectorIndex
from vitrine.index.faiss_index import FaissIndex

BACKENDS = {"faiss": FaissIndex}


def create_index(dim: int, config: IndexConfig | None = None) -> VectorIndex:
    return FaissIndex(dim, config)


def load_index(folder: Path, config: IndexConfig | None = None) -> VectorIndex | None:
    """The index saved in ``folder``, or ``None`` if there is none yet."""
    return FaissIndex.load(folder, config) if FaissIndex.exists(folder) else None


__all__ = ["FaissIndex", "VectorIndex", "create_index", "load_index"]
