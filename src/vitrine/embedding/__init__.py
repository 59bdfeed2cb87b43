"""Product and query embedding: the seam between backbones and the index."""

from vitrine.embedding.base import Embedder, Query
from vitrine.embedding.zeroshot import ZeroShotEmbedder

__all__ = ["Embedder", "Query", "ZeroShotEmbedder"]
