"""Reranking (Pailitao-VL): pointwise, chunkwise listwise with a NULL option, a calibrated absolute
scorer and the hybrid merge, behind one front door: ``Reranker.load(folder).rank(query, candidates)``."""

from vitrine.rerank.calibration import Calibrator, expected_calibration_error, reliability_diagram
from vitrine.rerank.features import CandidateList, FeatureBuilder, FeatureSpec, ProductTable, product_table
from vitrine.rerank.levels import CONCEPT, FUNCTIONAL, INSTANCE, IRRELEVANT
from vitrine.rerank.losses import level_cross_entropy, null_loss, pairwise_discordant_loss
from vitrine.rerank.merge import chunk_slices, hybrid_merge, merge_chunks, sliding_window
from vitrine.rerank.models import ChunkListwiseModel, PointwiseScorer
from vitrine.rerank.reranker import STRATEGIES, BaseReranker, Candidate, Ranked, Reranker, RerankQuery

__all__ = ["CONCEPT", "FUNCTIONAL", "INSTANCE", "IRRELEVANT", "STRATEGIES", "BaseReranker", "Calibrator", "Candidate",
           "CandidateList", "ChunkListwiseModel", "FeatureBuilder", "FeatureSpec", "PointwiseScorer", "ProductTable",
           "Ranked", "RerankQuery", "Reranker", "chunk_slices", "expected_calibration_error", "hybrid_merge",
           "level_cross_entropy", "merge_chunks", "null_loss", "pairwise_discordant_loss", "product_table",
           "reliability_diagram", "sliding_window"]
