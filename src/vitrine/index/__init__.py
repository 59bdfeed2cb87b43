"""Vector indexes behind one interface, chosen by name from config."""

from pathlib import Path

from vitrine.config import IndexConfig
from vitrine.index.base import VectorIndex
from vitrine.index.entries import entry_ids, group_by_product, product_keys
from vitrine.index.faiss_index import FaissIndex
from vitrine.index.fusion import FUSIONS, convex_fusion, fuse_batches, fuse_channels, reciprocal_rank_fusion
from vitrine.index.lexical import LexicalIndex
from vitrine.index.milvus_index import POINTER_FILE, MilvusIndex, is_milvus


def create_index(dim: int, config: IndexConfig | None = None, folder: Path | None = None) -> VectorIndex:
    """An empty index of the kind ``config`` names: FAISS in-process, or a Milvus collection when
    ``index.uri`` is set (an existing collection is emptied: this is a fresh build)."""
    config = config or IndexConfig()
    if is_milvus(config):
        index = MilvusIndex(dim, config, folder)
        index.clear()
        return index
    return FaissIndex(dim, config)


def load_index(folder: Path, config: IndexConfig | None = None, dim: int | None = None) -> VectorIndex | None:
    """The index saved in ``folder`` (or the Milvus collection it points to), or ``None`` if there is none yet."""
    config = config or IndexConfig()
    if is_milvus(config):
        if not (Path(folder) / POINTER_FILE).is_file() or dim is None:
            return None
        return MilvusIndex(dim, config, folder)
    return FaissIndex.load(folder, config) if FaissIndex.exists(folder) else None


__all__ = ["FUSIONS", "FaissIndex", "LexicalIndex", "MilvusIndex", "VectorIndex", "convex_fusion", "create_index",
           "entry_ids", "fuse_batches", "fuse_channels",
           "group_by_product", "load_index", "product_keys", "reciprocal_rank_fusion"]
