"""Product and query embedding: the seam between backbones and the index."""

from vitrine.embedding.base import Embedder, Query
from vitrine.embedding.ensemble import EnsembleEmbedder
from vitrine.embedding.towers import TowerConfig, TwoTowerModel
from vitrine.embedding.trained import TrainedEmbedder
from vitrine.embedding.zeroshot import ZeroShotEmbedder

__all__ = ["Embedder", "EnsembleEmbedder", "Query", "TowerConfig", "TrainedEmbedder", "TwoTowerModel", "ZeroShotEmbedder"]
