"""Training the reranker: lists from the retriever's top-K on the training split (its mistakes are the
hard negatives, for free), the chunk listwise model and the pointwise scorer, calibration of r.

The retriever is whatever embedder is passed in, so the lists can come from a model that never saw
those queries (cross-fitting, as the benchmark does) or from the store's own model (``vitrine
train-reranker``; see the README for why that makes training lists easier than real ones).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrine.catalog.datasets import Splits
from vitrine.catalog.product import Product
from vitrine.config import RerankConfig, SearchConfig, write_atomic
from vitrine.embedding import Embedder, Query
from vitrine.errors import VitrineError
from vitrine.index import LexicalIndex
from vitrine.progress import progress_bar
from vitrine.rerank.calibration import (Calibrator, ece_interval, expected_calibration_error,
                                        reliability_diagram, softmax)
from vitrine.rerank.features import (RELATIONS, CandidateList, FeatureBuilder, FeatureSpec, ProductTable,
                                     catalog_entries, retrieve)
from vitrine.rerank.history import QueryHistory
from vitrine.rerank.levels import INSTANCE, IRRELEVANT, levels_for, to_gain
from vitrine.rerank.losses import level_cross_entropy, null_loss, pairwise_discordant_loss
from vitrine.rerank.metrics import mean_metrics, query_metrics
from vitrine.rerank.models import ChunkListwiseModel, ModelConfig, PointwiseScorer, chunk_cosines
from vitrine.rerank.reranker import Reranker, RerankSettings, stack_lists

log = logging.getLogger(__name__)

ALL_LOSSES = ("pairwise", "null", "absolute")


@dataclass
class LabelledList:
    """A training or evaluation query: what to search with, and every product's level (default 3)."""

    query: Query
    levels: dict[str, int]
    key: str
    exclude: tuple[str, ...] = ()


@dataclass
class FitReport:
    epochs: int = 0
    best_epoch: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    dev_scores: list[float] = field(default_factory=list)
    """Dev NDCG@10 after each epoch, the first entry before training (epoch 0)."""


# --- queries and lists -----------------------------------------------------------------------

def query_key(pair) -> str:
    """The query a training pair belongs to."""
    return pair.query_key or f"{pair.query_text}|{pair.query_image}"


def training_queries(splits: Splits, products: Mapping[str, Product]) -> list[LabelledList]:
    """The training pairs grouped into queries (one per ``query_key``), with levels for every product."""
    grouped: dict[str, dict[str, int]] = defaultdict(dict)
    first: dict[str, Any] = {}
    for pair in splits.train:
        key = query_key(pair)
        grouped[key][pair.product_id] = max(pair.grade, grouped[key].get(pair.product_id, 0))
        first.setdefault(key, pair)
    queries = []
    for key, relevant in grouped.items():
        pair = first[key]
        # Shopee: a listing's title must not find the listing itself (the val protocol excludes it too).
        exclude = (key,) if splits.name == "shopee" and key in products else ()
        queries.append(LabelledList(Query(text=pair.query_text, image=pair.query_image),
                                    levels_for(splits.name, relevant, products), key, exclude))
    return queries


def val_queries(splits: Splits, products: Mapping[str, Product]) -> list[LabelledList]:
    return [LabelledList(Query(text=q.text, image=q.image), levels_for(splits.name, q.relevant, products),
                         q.where or str(i), tuple(q.exclude)) for i, q in enumerate(splits.val)]


def query_history(queries: Sequence[LabelledList], query_vectors: np.ndarray, table: ProductTable) -> QueryHistory:
    """The history a reranker keeps: each query's vector (``query_vectors``, the reranker's embedder's),
    once per instance match it has in the table."""
    key_of = {pid: int(key) for pid, key in zip(table.ids, table.keys.tolist())}
    vectors, keys, sources = [], [], []
    for query, vector in zip(queries, query_vectors):
        for pid, level in query.levels.items():
            if level == INSTANCE and pid in key_of and pid not in query.exclude:
                vectors.append(vector)
                keys.append(key_of[pid])
                sources.append(query.key)
    return QueryHistory(np.array(vectors, dtype=np.float32).reshape(-1, table.dim), np.array(keys, dtype=np.int64),
                        sources)


def build_lists(queries: Sequence[LabelledList], embedder: Embedder, table: ProductTable, *, k: int,
                lexical: LexicalIndex | None = None, fuse_lexical: bool = False, rrf_k: int = 60, depth: int = 100,
                fusion: str = SearchConfig.fusion, history: QueryHistory | None = None, vector_inputs: bool = True,
                query_vectors: np.ndarray | None = None, batch_size: int = 64,
                progress: bool = False) -> list[CandidateList]:
    """Each query's top-``k`` from ``embedder`` over the table (fused with BM25 if ``fuse_lexical``), as
    feature lists labelled with levels. A query's own rows of ``history`` are left out of its features;
    ``vector_inputs``: the raw vectors are model inputs too (``FeatureSpec.vectors``); ``query_vectors``:
    the queries already encoded by ``embedder`` (encoded here if not given)."""
    builder = FeatureBuilder(table, lexical, history, vector_inputs)
    key_of = {pid: int(key) for pid, key in zip(table.ids, table.keys.tolist())}
    id_of = dict(zip(table.keys.tolist(), table.ids))
    lists = []
    bar = progress_bar(total=len(queries), enabled=progress, desc="rerank lists", unit=" queries")
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        vectors = (query_vectors[start:start + batch_size] if query_vectors is not None
                   else embedder.encode_queries([q.query for q in batch]))
        extra = max((len(q.exclude) for q in batch), default=0)
        scores, keys = retrieve(table, vectors, k + extra, texts=[q.query.text for q in batch],
                                lexical=lexical if fuse_lexical else None, rrf_k=rrf_k, depth=max(depth, k + extra),
                                fusion=fusion)
        for query, vector, row_scores, row_keys in zip(batch, vectors, scores, keys):
            excluded = {key_of[pid] for pid in query.exclude if pid in key_of}
            keep = [(int(key), float(score)) for key, score in zip(row_keys, row_scores)
                    if key >= 0 and int(key) not in excluded][:k]
            found = [key for key, _ in keep]
            levels = np.array([query.levels.get(id_of[key], IRRELEVANT) for key in found], dtype=np.int64)
            ideal = np.sort(np.array([to_gain(level) for pid, level in query.levels.items()
                                      if level < IRRELEVANT and pid not in query.exclude], dtype=np.float32))[::-1]
            built = builder.build(vector, query.query.text, query.query.image is not None, found,
                                  [score for _, score in keep], levels, ideal.copy(),
                                  exclude=query.key)
            built.labelled = np.array([id_of[key] in query.levels for key in found], dtype=bool)
            lists.append(built)
        bar.update(len(batch))
    bar.close()
    return lists


def cross_fit_folds(queries: Sequence[LabelledList], vectors: np.ndarray, folds: int = 2, seed: int = 0,
                    whole: float = 0.0) -> np.ndarray:
    """The fold of each training query for cross-fitting, with look-alike queries of one product kept in
    one fold: each product's queries are split by k-means (k = ``folds``) on their ``vectors`` (any
    embedder's; the zero-shot one will do), one cluster to each fold, the largest to the emptiest. A
    ``whole`` share of the products (drawn at random) keep all their queries in one fold instead, the
    emptiest: in that fold's lists they are products the retriever and the history never met.

    Why: training photos are often taken in bursts, so a random fold split leaves a near-copy of nearly
    every query in the other fold. The retriever trained on the other fold then "knows" the query, and
    its lists (and any query-history feature) look nothing like those of a val query from another day.
    On Grocery a random split gives a training query a same-product photo at cosine 0.85 (median) in
    the other folds; this split gives 0.66 with two folds and 0.70 with three, and val photos meet 0.69
    in the training split.
    Queries with no single instance match (CrowdFlower's) are dealt at random.
    """
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    assigned = np.full(len(queries), -1, dtype=np.int64)
    by_product, loose = _by_instance(queries)
    sizes = np.zeros(folds, dtype=np.int64)
    products = sorted(by_product)
    kept_whole = _drawn_whole(products, whole, rng)
    for product in products:
        rows = np.array(by_product[product])
        if product in kept_whole:
            fold = int(np.argmin(sizes))
            assigned[rows], sizes[fold] = fold, sizes[fold] + len(rows)
            continue
        if len(rows) < folds:
            loose.extend(rows.tolist())
            continue
        labels = KMeans(folds, n_init=4, random_state=seed).fit_predict(vectors[rows])
        counts = np.bincount(labels, minlength=folds)
        # One cluster per fold (every fold keeps some of the product), the largest to the emptiest fold.
        for cluster, fold in zip(np.argsort(-counts, kind="stable"), np.argsort(sizes, kind="stable")):
            assigned[rows[labels == cluster]] = fold
            sizes[fold] += counts[cluster]
    for i, row in enumerate(rng.permutation(loose)):
        assigned[row] = i % folds
    return assigned


def _by_instance(queries: Sequence[LabelledList]) -> tuple[dict[str, list[int]], list[int]]:
    """The rows of the queries with a single instance match, by that product; the other rows."""
    by_product: dict[str, list[int]] = defaultdict(list)
    loose = []
    for row, query in enumerate(queries):
        instances = [pid for pid, level in query.levels.items() if level == INSTANCE]
        (by_product[instances[0]] if len(instances) == 1 else loose).append(row)
    return by_product, loose


def _drawn_whole(products: Sequence[str], whole: float, rng: np.random.Generator) -> set[str]:
    return set(rng.choice(products, round(whole * len(products)), replace=False).tolist()) if whole else set()


def whole_products(queries: Sequence[LabelledList], whole: float, seed: int = 0) -> dict[str, list[int]]:
    """The products ``cross_fit_folds`` (same ``whole`` and ``seed``) keeps whole, with the rows of their queries."""
    by_product, _ = _by_instance(queries)
    return {product: by_product[product]
            for product in _drawn_whole(sorted(by_product), whole, np.random.default_rng(seed))}


def held_out_whole(queries: Sequence[LabelledList], whole: float, seed: int = 0) -> set[str]:
    """The keys of the queries about the products ``whole_products`` holds out whole (same ``whole`` and ``seed``)."""
    return {queries[row].key for rows in whole_products(queries, whole, seed).values() for row in rows}


def history_without(queries: Sequence[LabelledList], query_vectors: np.ndarray, table: ProductTable,
                    left_out: set[str]) -> QueryHistory:
    """``query_history`` of the queries whose keys are not in ``left_out``."""
    keep = [row for row, query in enumerate(queries) if query.key not in left_out]
    return query_history([queries[row] for row in keep], np.asarray(query_vectors)[keep], table)


def unseen_share(queries: Sequence[LabelledList], catalog_size: int) -> float:
    """The share of a catalog of ``catalog_size`` products that no query in ``queries`` is an instance match for:
    products a served reranker meets with no query history and no training behind them."""
    about = {pid for query in queries for pid, level in query.levels.items() if level == INSTANCE}
    return max(0.0, 1.0 - len(about) / catalog_size) if catalog_size else 0.0


def held_back(queries: Sequence[LabelledList], vectors: np.ndarray, fraction: float,
              seed: int, whole: float = 0.0) -> tuple[list[int], list[int]]:
    """(train, dev) indices with whole look-alike clusters held back: one of ``round(1 / fraction)``
    ``cross_fit_folds`` folds. A random dev split keeps near-copies of its queries in training, and then
    picks the epoch that has memorised them best."""
    if len(queries) < 10 or fraction <= 0:
        return list(range(len(queries))), []
    assigned = cross_fit_folds(queries, vectors, max(2, round(1 / fraction)), seed, whole)
    return [i for i, fold in enumerate(assigned) if fold != 0], [i for i, fold in enumerate(assigned) if fold == 0]


def split_dev(items: Sequence[Any], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, dev) indices: whole queries held back to pick the best epoch and to calibrate r."""
    order = np.random.default_rng(seed + 7).permutation(len(items))
    n_dev = int(round(fraction * len(items))) if len(items) >= 10 else 0
    return sorted(order[n_dev:].tolist()), sorted(order[:n_dev].tolist())


# --- fitting ---------------------------------------------------------------------------------

def _chunk_tensors(lists: Sequence[CandidateList], size: int):
    query, items, mask, similarity, vectors = stack_lists(lists, size)
    if similarity is None:  # lists built as served: the cosines once, here, rather than every epoch
        similarity = chunk_cosines(vectors)
    levels = np.full(mask.shape, IRRELEVANT, dtype=np.int64)
    levels.reshape(-1)[mask.numpy().reshape(-1)] = np.concatenate([found.levels for found in lists]) if lists else []
    return query, items, mask, similarity, torch.from_numpy(levels)


def ranked_levels(reranker: Reranker, lists: Sequence[CandidateList], strategy: str) -> list[list[int]]:
    """Each list's levels in the order ``strategy`` (or ``retrieval``: the retriever's order) ranks it."""
    if strategy == "retrieval":
        orders = [np.arange(len(found)) for found in lists]
    else:
        orders = [ordering.order for ordering in reranker.rank_lists(lists, strategy)]
    return [found.levels[order].tolist() for found, order in zip(lists, orders)]


def evaluate_queries(reranker: Reranker, lists: Sequence[CandidateList], strategy: str,
                     k: int | None = None) -> dict[str, np.ndarray]:
    """Per-query level metrics of ``strategy`` on labelled lists (``query_metrics``)."""
    k = k or max((len(found) for found in lists), default=1)
    return query_metrics(ranked_levels(reranker, lists, strategy),
                         [found.ideal if found.ideal is not None else np.zeros(0) for found in lists], k)


def evaluate_lists(reranker: Reranker, lists: Sequence[CandidateList], strategy: str, k: int | None = None) -> dict[str, float]:
    """Level metrics of ``strategy`` (or retrieval order for ``retrieval``) on labelled lists."""
    return mean_metrics(evaluate_queries(reranker, lists, strategy, k))


def model_config(spec: FeatureSpec, config: RerankConfig) -> ModelConfig:
    prior = spec.column("retrieval_z") if config.retrieval_prior else None
    if config.absolute_prior not in ("retrieval", "local"):
        raise VitrineError(f"unknown rerank.absolute_prior {config.absolute_prior!r} (retrieval or local)")
    return ModelConfig(spec.query_dim, spec.item_dim, config.dim, config.layers, config.heads, config.dropout, prior,
                       config.relational, len(RELATIONS), config.absolute_prior == "local")


def fit_listwise(train: Sequence[CandidateList], dev: Sequence[CandidateList], spec: FeatureSpec,
                 config: RerankConfig, losses: Sequence[str] = ALL_LOSSES, *, progress: bool = False,
                 dev_strategy: str | None = None) -> tuple[ChunkListwiseModel, FitReport]:
    """The chunk model with the named losses (``pairwise``, ``null``, ``absolute``), early-stopped on the dev
    NDCG@10 of the strategy those losses serve."""
    unknown = set(losses) - set(ALL_LOSSES)
    if unknown or not losses:
        raise VitrineError(f"unknown reranker losses {sorted(unknown)} (choose from {', '.join(ALL_LOSSES)})")
    torch.manual_seed(config.seed)
    model = ChunkListwiseModel(model_config(spec, config))
    query, items, mask, similarity, levels = _chunk_tensors(train, config.chunk_size)
    model.query_norm.fit(query)
    model.item_norm.fit(items[mask])
    strategy = dev_strategy or ("hybrid" if "absolute" in losses else "listwise" if "null" in losses else "local")

    def step_loss(batch: torch.Tensor) -> torch.Tensor:
        out = model(query[batch], items[batch], mask[batch], similarity[batch])
        m, lv = mask[batch], levels[batch]
        local = out.local.masked_fill(~m, 0.0)  # padded slots must not turn a weight of 0 into 0·inf
        total = local.sum() * 0.0
        if "pairwise" in losses:
            total = total + pairwise_discordant_loss(local, lv, m, config.tau)
        if "null" in losses:
            total = total + config.null_weight * null_loss(local, out.null, lv, m, config.tau)
        if "absolute" in losses:
            total = total + config.absolute_weight * level_cross_entropy(out.level_logits, lv, m)
        return total

    return model, _fit(model, len(query), step_loss, dev, spec, config, "listwise", strategy, progress)


def fit_pointwise(train: Sequence[CandidateList], dev: Sequence[CandidateList], spec: FeatureSpec,
                  config: RerankConfig, *, progress: bool = False) -> tuple[PointwiseScorer, FitReport]:
    torch.manual_seed(config.seed)
    model = PointwiseScorer(model_config(spec, config))
    query = torch.from_numpy(np.concatenate([np.repeat(found.query[None], len(found), axis=0) for found in train]))
    items = torch.from_numpy(np.concatenate([found.items for found in train]))[:, None, :]
    levels = torch.from_numpy(np.concatenate([found.levels for found in train]))[:, None]
    model.query_norm.fit(query)
    model.item_norm.fit(items)

    def step_loss(batch: torch.Tensor) -> torch.Tensor:
        return level_cross_entropy(model(query[batch], items[batch]), levels[batch])

    # The same number of candidates per step as the listwise model sees (batch_size chunks of M).
    steps_config = copy.copy(config)
    steps_config.batch_size = config.batch_size * config.chunk_size
    return model, _fit(model, len(query), step_loss, dev, spec, steps_config, "pointwise", "pointwise", progress)


def _fit(model: torch.nn.Module, count: int, step_loss, dev: Sequence[CandidateList], spec: FeatureSpec,
         config: RerankConfig, kind: str, strategy: str, progress: bool) -> FitReport:
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    report = FitReport()
    best: tuple[float, int, dict] | None = None
    start = time.perf_counter()
    steps = max(1, -(-count // config.batch_size))
    bar = progress_bar(total=config.epochs * steps, enabled=progress, desc=f"train {kind}", unit=" steps")
    probe = Reranker(spec, **{kind: model}, settings=RerankSettings(strategy, config.chunk_size, config.stride))

    def keep_if_best(epoch: int) -> bool:
        """Score the dev lists; False once ``patience`` epochs have passed without a new best."""
        nonlocal best
        model.eval()
        score = evaluate_lists(probe, dev, strategy)["ndcg@10"]
        report.dev_scores.append(score)
        if best is None or score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
        return epoch - best[1] < config.patience

    if dev:
        # Epoch 0 is a candidate too: with a retrieval prior it is the retriever's own order, so a model
        # whose training never helps on dev falls back to it instead of to its least bad epoch.
        keep_if_best(0)
    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_losses = []
        for batch in np.array_split(rng.permutation(count), steps):
            loss = step_loss(torch.from_numpy(batch))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            epoch_losses.append(float(loss.detach()))
            bar.update(1)
        report.losses.append(float(np.mean(epoch_losses)))
        report.epochs = epoch
        bar.set_postfix(loss=f"{report.losses[-1]:.4f}")
        if dev and not keep_if_best(epoch):
            break
    bar.close()
    if best is not None:
        model.load_state_dict(best[2])
        report.best_epoch = best[1]
    else:
        report.best_epoch = report.epochs
    report.seconds = time.perf_counter() - start
    model.eval()
    return report


def level_logits(reranker: Reranker, lists: Sequence[CandidateList]) -> tuple[np.ndarray, np.ndarray]:
    """The absolute scorer's level logits for every candidate of ``lists``, and each candidate's true level."""
    entries = reranker.chunk_scores(lists)
    return (np.concatenate([entry["logits"] for entry in entries]),
            np.concatenate([found.levels for found in lists]))


def calibrate(reranker: Reranker, dev: Sequence[CandidateList], kind: str) -> dict[str, Any]:
    """Fit the calibrator of r on the dev lists. Returns the dev ECE before and after, and, since the
    calibrator was fitted on those very lists, an estimate for queries it has not seen: each half of the dev
    queries calibrated by a calibrator fitted on the other half (``dev_ece_held_out``, with the range of 95%
    of its values over resampled sets of those queries)."""
    if not dev or reranker.listwise is None:
        return {}
    logits, levels = level_logits(reranker, dev)
    before = expected_calibration_error(softmax(logits)[:, 0], levels == INSTANCE)
    reranker.calibrator = Calibrator.fit(kind, logits, levels)
    after = expected_calibration_error(reranker.calibrator(logits), levels == INSTANCE)
    report: dict[str, Any] = {"dev_ece_raw": before, "dev_ece_calibrated": after}
    held_out = calibrated_by_other_half(logits, levels, [len(found) for found in dev], kind)
    if held_out is not None:
        bounds = np.cumsum([len(found) for found in dev])[:-1]
        ece, low, high = ece_interval(np.split(held_out, bounds), np.split(levels == INSTANCE, bounds))
        report.update({"dev_ece_held_out": ece, "dev_ece_held_out_95%": [low, high]})
    return report


def calibrated_by_other_half(logits: np.ndarray, levels: np.ndarray, sizes: Sequence[int],
                             kind: str) -> np.ndarray | None:
    """r for the candidates of lists of ``sizes`` (their ``logits`` and ``levels`` concatenated), each half of the
    lists calibrated by a calibrator fitted on the other half: r as a calibrator meets queries it has not seen.
    ``None`` with fewer than 4 lists."""
    if len(sizes) < 4:
        return None
    owner = np.repeat(np.random.default_rng(0).permutation(len(sizes)) % 2, sizes)
    held_out = np.zeros(len(levels))
    for side in (0, 1):
        fitted = Calibrator.fit(kind, logits[owner != side], levels[owner != side])
        held_out[owner == side] = fitted(logits[owner == side])
    return held_out


def plot_training(report: Mapping[str, Any], path: Path) -> Path:
    """Both models' training loss and held-back NDCG@10 per epoch (epoch 0: the retriever's own order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, dev_axis) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for name, fit in (("chunk listwise", report.get("listwise")), ("pointwise", report.get("pointwise"))):
        if not fit:
            continue
        loss_axis.plot(range(1, len(fit["losses"]) + 1), fit["losses"], marker="o", markersize=3, label=name)
        if fit["dev_scores"]:
            line, = dev_axis.plot(range(len(fit["dev_scores"])), fit["dev_scores"], marker="o", markersize=3,
                                  label=f"{name} (kept: epoch {fit['best_epoch']})")
            dev_axis.axvline(fit["best_epoch"], color=line.get_color(), linestyle=":", linewidth=1)
    for axis, label in ((loss_axis, "mean training loss"), (dev_axis, "held-back NDCG@10")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # no held-back lists: nothing on the right
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def save_plots(reranker: Reranker, dev: Sequence[CandidateList], report: Mapping[str, Any], folder: Path) -> list[Path]:
    """``training.png`` (loss and held-back NDCG per epoch) and, with held-back lists, ``reliability.png``
    (r before and after calibration on them, and with each half of them calibrated on the other)."""
    plots = [plot_training(report, folder / "training.png")]
    if dev and reranker.listwise is not None:
        logits, levels = level_logits(reranker, dev)
        matches = levels == INSTANCE
        curves = {"raw": (softmax(logits)[:, 0], matches)}
        if reranker.calibrator.kind != "none":
            kind = reranker.calibrator.kind
            curves[f"calibrated ({kind}) on them"] = (reranker.calibrator(logits), matches)
            held_out = calibrated_by_other_half(logits, levels, [len(found) for found in dev], kind)
            if held_out is not None:
                curves[f"each half calibrated ({kind}) on the other"] = (held_out, matches)
        plots.append(reliability_diagram(curves, folder / "reliability.png",
                                         title=f"r on the {len(dev)} held-back lists"))
    return plots


def train_reranker(train: Sequence[CandidateList], dev: Sequence[CandidateList], config: RerankConfig, *,
                   embedding: dict[str, Any] | None = None, losses: Sequence[str] = ALL_LOSSES,
                   pointwise: bool = True, history: QueryHistory | None = None,
                   progress: bool = False) -> tuple[Reranker, dict[str, Any]]:
    """Both models on the same lists, r calibrated on ``dev``; returns the reranker (keeping ``history``,
    the one its lists were built with, for serving) and a report."""
    if not train:
        raise VitrineError("no training lists: the training split has no queries the retriever could answer")
    spec = train[0].spec or FeatureSpec(int(train[0].query.shape[0]) - 2)
    listwise, listwise_report = fit_listwise(train, dev, spec, config, losses, progress=progress)
    point, point_report = fit_pointwise(train, dev, spec, config, progress=progress) if pointwise else (None, None)
    reranker = Reranker(spec, listwise, point, settings=RerankSettings(config.strategy, config.chunk_size, config.stride),
                        embedding=embedding or {}, history=history)
    calibration = calibrate(reranker, dev, config.calibration if "absolute" in losses else "none")
    # How each strategy does on the held-back queries, the user's evidence for choosing one ("auto" does).
    offered = ("pointwise",) * (point is not None) + ("listwise", "hybrid")
    dev_ndcg = ({name: evaluate_lists(reranker, dev, name)["ndcg@10"] for name in ("retrieval",) + offered}
                if dev else {})
    if config.strategy == "auto":
        reranker.settings.strategy = max(offered, key=lambda name: dev_ndcg.get(name, 0.0)) if dev else "hybrid"
    report = {"train_lists": len(train), "dev_lists": len(dev), "losses": list(losses),
              "listwise": asdict(listwise_report), "pointwise": asdict(point_report) if point_report else None,
              "calibration": calibration, "dev_ndcg@10": dev_ndcg, "strategy": reranker.settings.strategy}
    return reranker, report


FoldRetriever = Callable[[int, set[str]], Embedder]
"""``(fold, query keys)`` → an embedder trained on those training queries only."""


def cross_fitted_lists(queries: Sequence[LabelledList], vectors: np.ndarray, entries, retriever: FoldRetriever,
                       config: RerankConfig, *, lexical: LexicalIndex | None = None, fuse_lexical: bool = False,
                       rrf_k: int = 60, fusion: str = SearchConfig.fusion, whole: float = 0.0,
                       progress: bool = False) -> list[CandidateList]:
    """Each query's list from a retriever trained without its fold (``cross_fit_folds`` on ``vectors``), with
    the other folds' queries as its history: what a val query meets, a retriever and a history that have
    never seen it. ``entries``: the catalog's ``(key, version, product)`` for the fold retrievers' tables."""
    folds = cross_fit_folds(queries, vectors, config.cross_fit, config.seed, whole)
    lists: list[CandidateList | None] = [None] * len(queries)
    for fold in range(config.cross_fit):
        inside = np.flatnonzero(folds == fold)
        past = [q for q, f in zip(queries, folds) if f != fold]
        embedder = retriever(fold, {q.key for q in past})
        table = ProductTable.build(entries, embedder, progress=progress)
        history = (query_history(past, embedder.encode_queries([q.query for q in past]), table)
                   if config.history else None)
        built = build_lists([queries[i] for i in inside], embedder, table, k=config.candidates, lexical=lexical,
                            fuse_lexical=fuse_lexical, rrf_k=rrf_k, fusion=fusion, history=history,
                            vector_inputs=config.vector_inputs, progress=progress)
        for i, found in zip(inside.tolist(), built):
            lists[i] = found
    return lists  # type: ignore[return-value]


def train_store_reranker(store, splits: Splits, embedder: Embedder, table: ProductTable, config: RerankConfig, *,
                         lexical: LexicalIndex | None = None, fuse_lexical: bool = False, rrf_k: int = 60,
                         fusion: str = SearchConfig.fusion, name: str | None = None,
                         fold_retriever: FoldRetriever | None = None,
                         progress: bool = True) -> tuple[Reranker, dict[str, Any]]:
    """``vitrine train-reranker``: lists from ``embedder``'s top-K on the training split (cross-fitted with
    ``fold_retriever`` when given and ``config.cross_fit`` > 1), both models, calibration; saved as
    ``STORE/models/NAME`` (safetensors + config.json + training.json)."""
    products = {p.id: p for p in store.catalog}
    # Held-out products (Grocery's new-products protocol) have no training pairs, so no list is about
    # them; they still appear among the candidates of other queries, as they will at search time.
    queries = training_queries(splits, products)
    # Encoded once: for the held-back clusters, the history and the lists.
    vectors = embedder.encode_queries([q.query for q in queries], progress=progress)
    whole = unseen_share(queries, len(products)) if config.new_products else 0.0
    train_rows, dev_rows = held_back(queries, vectors, config.dev_fraction, config.seed, whole)
    held = held_out_whole(queries, whole, config.seed)
    history = query_history(queries, vectors, table) if config.history else None
    # Every fold needs queries of its own and a retriever trained on the others'.
    cross_fit = config.cross_fit if fold_retriever is not None and 1 < config.cross_fit <= len(queries) // 2 else 0
    if cross_fit:
        lists = cross_fitted_lists(queries, vectors, catalog_entries(store), fold_retriever, config, lexical=lexical,
                                   fuse_lexical=fuse_lexical, rrf_k=rrf_k, fusion=fusion, whole=whole,
                                   progress=progress)
    else:
        # No fold retriever to keep them from: the products held out whole are left out of the history every
        # training list reads, as a fold's history lacks them (hiding them from their own queries' lists alone
        # taught the reranker that a product without history is often the match); the served history keeps them.
        lists_history = history_without(queries, vectors, table, held) if history is not None else None
        lists = build_lists(queries, embedder, table, k=config.candidates, lexical=lexical, fuse_lexical=fuse_lexical,
                            rrf_k=rrf_k, fusion=fusion, history=lists_history, vector_inputs=config.vector_inputs,
                            query_vectors=vectors, progress=progress)
    reranker, report = train_reranker([lists[i] for i in train_rows], [lists[i] for i in dev_rows], config,
                                      embedding=embedder.describe(), history=history, progress=progress)
    folder = Path(store.models_dir) / (name or config.model)
    report.update({"name": folder.name, "data": splits.name, "queries": len(queries), "candidates": config.candidates,
                   "cross_fit_folds": cross_fit, "unseen_share": whole,
                   "queries_held_out_whole": len(held),
                   "fuse_lexical": fuse_lexical, "config": asdict(config)})
    reranker.save(folder, extra={"fuse_lexical": fuse_lexical})
    report["plots"] = [path.name for path in save_plots(reranker, [lists[i] for i in dev_rows], report, folder)]
    write_atomic(folder / "training.json", json.dumps(report, indent=2).encode())
    return reranker, report
