"""Training the embedding towers: losses, negative sources, masks, the trainer, and its front door."""

from vitrine.training.data import TrainingSet, build_training_set
from vitrine.encoders.cache import FeatureCache
from vitrine.training.keywords import extract_keywords, keyword_overlap, keyword_queries
from vitrine.training.losses import InfoNCE, MatryoshkaLoss, SymmetricInfoNCE
from vitrine.training.masks import batch_mask, equivalence_matrix
from vitrine.training.negatives import HardNegativeMiner, MemoryBank, gather_from_processes
from vitrine.training.run import train_store
from vitrine.training.trainer import ContrastiveTrainer, TrainResult

__all__ = ["ContrastiveTrainer", "FeatureCache", "HardNegativeMiner", "InfoNCE", "MatryoshkaLoss", "MemoryBank",
           "SymmetricInfoNCE", "TrainResult", "TrainingSet", "batch_mask", "build_training_set", "equivalence_matrix",
           "extract_keywords", "gather_from_processes", "keyword_overlap", "keyword_queries", "train_store"]
