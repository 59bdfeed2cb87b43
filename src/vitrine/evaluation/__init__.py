"""Metrics, the evaluation harness, and reports."""

from vitrine.evaluation.confusions import Confusion, ProductRecall, confusions, hardest_products
from vitrine.evaluation.evaluate import EvalReport, QueryResult, evaluate
from vitrine.evaluation.metrics import (average_precision_at_k, mean_metrics, ndcg_at_k, precision_at_k,
                                        query_metrics, recall_at_k, reciprocal_rank)

__all__ = ["Confusion", "EvalReport", "ProductRecall", "QueryResult", "average_precision_at_k", "confusions",
           "evaluate", "hardest_products", "mean_metrics", "ndcg_at_k", "precision_at_k", "query_metrics",
           "recall_at_k", "reciprocal_rank"]
