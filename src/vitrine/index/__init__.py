"""Vector indexes behind one interface, chosen by name from config."""

from pathlib import Path

from vitrine.config import IndexConfig
from vitrine.index.base import VectorIndex
from vitrine.index.faiss_index import FaissIndex
from vitrine.index.fusion import fuse_batches, reciprocal_rank_fusion
from vitrine.index.lexical import LexicalIndex

def create_index(dim: int, config: IndexConfig | None = None) -> VectorIndex:
    return FaissIndex(dim, config)


def load_index(folder: Path, config: IndexConfig | None = None) -> VectorIndex | None:
    """The index saved in ``folder``, or ``None`` if there is none yet."""
    return FaissIndex.load(folder, config) if FaissIndex.exists(folder) else None


__all__ = ["FaissIndex", "LexicalIndex", "VectorIndex", "create_index", "fuse_batches", "load_index",
           "reciprocal_rank_fusion"]
