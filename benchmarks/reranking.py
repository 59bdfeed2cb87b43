r"""Reranking benchmark (issue 5): Pailitao-VL's ablation on Grocery val and CrowdFlower val, latency,
calibration, in one run.

    python benchmarks/reranking.py [--data ../shared/data] [--work .vitrine/bench-rerank] \
        [--only grocery,crowdflower] [--json out.json] [--latency-queries 100] [--seeds 3] [--layers N] \
        [--zero-shot-weight W] [--retriever towers|prototype|zero-shot] [--protocol seen|new] [--no-new-products] \
        [--cross-validate SEEDS]

For each dataset: the best retriever we can afford (trained towers, default config; CrowdFlower fused
with BM25 by the default fusion, convex since session 12) gives K = 50 candidates per query. With
``--zero-shot-weight W`` the retrievers are served beside the frozen backbones' zero-shot vectors
(``embedding.zero_shot_weight``), and the reranker reads that ensemble's vectors. With ``--retriever
prototype`` Grocery's retrievers (every fold's and the val one) are issue 4's best single model instead of
contrastive towers: prototype-ID training, stages 1-3, EfficientNet-Lite0 at 288 px without an image
projection, stage 3 as a classifier (``vitrine train --stage3-recipe classifier``; top 5 blocks, 8 epochs).
Use another ``--work`` for it: retrievers are reused by name. ``--protocol new`` trains Grocery's retrievers and
reranker without the products of issue 3's new-products protocol (``fine_id % 4 == 3``: no training photo, no query
history) and adds each method's hit@1 on the val photos of those never-trained products (another ``--work`` again).
``--retriever zero-shot`` builds every list from the zero-shot vectors (no retriever trained, so nothing to
cross-fit: the path ``vitrine train-reranker`` takes over a store without trained towers, where
``rerank.new_products`` leaves the products it holds out whole out of the training lists' history instead).

Training lists are *cross-fitted*: the training queries are split in folds (``--fold-count``, 3); a
retriever trained on the other folds' queries builds each fold's lists, so the reranker learns from the
mistakes a retriever makes on queries it has not seen, which is what it meets at val time. Folds keep
look-alike queries of one product together (``--folds dissimilar``, the default; see ``cross_fit_folds``):
photos taken in bursts would otherwise have near-copies on both sides. The val lists come from a
retriever trained on the whole training split. Retrievers are trained once and reused from --work.

Variants (cumulative, as in the paper's ablation): retrieval only; pointwise; chunk listwise (pairwise
loss, local scores sorted across chunks); + NULL (pairwise + NULL losses, local − NULL); + absolute
scorer (all three losses, sorted by r); + hybrid merge (same model, local order within chunks, K-way
merge by r). Each is trained with ``--seeds`` seeds; the table gives the mean (± the SD over seeds), and
the hybrid is compared with pointwise and retrieval query by query (paired differences with a bootstrap
95% interval), since a val split of a few hundred queries, let alone CrowdFlower's 35, cannot separate
rankers a point apart. Every model uses the defaults: a retrieval prior on its heads, scalar inputs only (no raw
vectors), the query-history features (past queries = the training queries the list's retriever was
trained on) and relational attention in the chunk model (candidate-candidate cosines of the fused, text
and image vectors bias it). A second
table switches those four on and off for the hybrid (``PARTS``). Held-back
training queries (epoch choice, calibration) are whole look-alike clusters (``held_back``).
Calibration: the ECE of r per seed; for seed 0 the range of 95% of its values over resampled sets of val queries and
the ECE a perfectly calibrated r of the same values would show on as many candidates. Latency: one query at a time,
2 and 1 threads, feature building + model + merge, with the models in ONNX Runtime (as served) and in eager PyTorch.

``--cross-validate SEEDS`` measures retrieval, pointwise and hybrid once more on the training queries: each
cross-fitting fold's lists (from a retriever that never saw the fold) are reranked by the default reranker trained
on the other folds' lists, so every training query is ranked by models that never saw it; the hybrid's paired
differences are given over those queries and over them together with val's. Val alone is a few hundred queries
(CrowdFlower's 35); the training split has several times as many.

Each dataset ends with the issue's targets and a verdict for each (``target_status``): a "hybrid beats X" target is
met when the paired interval lies above 0 (lost below it, a tie across it), read over the training and val queries
together when ``--cross-validate`` ran; ECE <= 0.05 on every seed; the latency ratios and p50 of ONNX, as served.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trained_embeddings import build_store  # noqa: E402  (one way to build benchmark stores)

from vitrine.config import STAGE3_RECIPES  # noqa: E402

K = 50
CALIBRATORS = ("platt", "temperature", "isotonic")
VARIANTS = [("retrieval only", None, "retrieval"), ("pointwise", "full", "pointwise"),
            ("chunk listwise", "pairwise", "local"), ("+ NULL", "pairwise+null", "listwise"),
            ("+ absolute scorer", "full", "absolute"), ("+ hybrid merge", "full", "hybrid")]
PROTOTYPE_RETRIEVER = {"training.objective": "prototype", "prototype.stages": "1,2,3",
                       "encoders.image": "efficientnet-lite0@288", "training.image_projection": "none",
                       "prototype.stage3_unfreeze": 5, "prototype.stage3_epochs": 8, **STAGE3_RECIPES["classifier"]}
"""``--retriever prototype``: the settings of issue 4's ``efficientnet-lite0@288:native`` model (BENCHMARKS.md,
session 20), its best single model on Grocery's seen products."""


def train_retriever(store, splits, name: str, keys: set[str] | None, overrides: dict[str, Any]) -> None:
    """Train towers on the pairs of the queries in ``keys`` (all if None) as models/NAME, unless already there."""
    from vitrine.training import train_store

    if (store.models_dir / name / "model.safetensors").is_file():
        return
    pairs = [p for p in splits.train if keys is None or p.query_key in keys]
    print(f"  training retriever {name} on {len(pairs)} pairs ...", flush=True)
    start = time.perf_counter()
    train_store(store, pairs, config=store.config({"embedding.kind": "zeroshot", **overrides}), name=name,
                held_out=splits.held_out, progress=False)
    print(f"  ... {time.perf_counter() - start:.0f} s", flush=True)


def embedder_for(store, name: str | None, zero_shot_weight: float = 0.0):
    """The trained towers models/NAME (served beside the zero-shot vectors with ``zero_shot_weight``), or the
    zero-shot embedder for ``None``."""
    from vitrine.encoders import FeatureCache
    from vitrine.engine.factory import build_embedder

    overrides = ({"embedding.kind": "trained", "embedding.model": name, "embedding.zero_shot_weight": zero_shot_weight}
                 if name else {"embedding.kind": "zeroshot"})
    config = store.config(overrides)
    return build_embedder(config, store.models_dir, None, FeatureCache(store.root / "cache" / "features.sqlite"))


@dataclass
class Folded:
    """The training split's lists with what cross-validating a reranker over them takes: each list's query key, the
    cross-fitting folds (a fold's lists come from a retriever that never saw the fold), the training queries and their
    zero-shot vectors (the held-back part of the other folds is chosen by them, as ``prepare`` chooses it)."""

    lists: list
    keys: list[str]
    folds: list[set[str]]
    queries: list
    vectors: np.ndarray
    whole: float
    scheme: str


def fold_keys(queries, vectors: np.ndarray, scheme: str, count: int, whole: float = 0.0) -> list[set[str]]:
    """The query keys of each cross-fitting fold: ``dissimilar`` keeps look-alike queries of a product in
    one fold (``cross_fit_folds`` on zero-shot vectors), ``random`` deals queries at random."""
    from vitrine.rerank.train import cross_fit_folds

    if scheme == "random":
        order = np.random.default_rng(0).permutation(len(queries))
        return [{queries[i].key for i in order[f::count]} for f in range(count)]
    assigned = cross_fit_folds(queries, vectors, count, whole=whole)
    return [{q.key for q, fold in zip(queries, assigned) if fold == f} for f in range(count)]


def dev_keys(queries, vectors: np.ndarray, scheme: str, fraction: float, seed: int, whole: float = 0.0) -> set[str]:
    """The training queries held back to pick the epoch and calibrate r, whole look-alike clusters
    (``held_back``) unless folds are ``random``."""
    from vitrine.rerank.train import held_back, split_dev

    _, dev = (split_dev(queries, fraction, seed) if scheme == "random"
              else held_back(queries, vectors, fraction, seed, whole))
    return {queries[i].key for i in dev}


def prepare(dataset: str, spec: str, data_name: str, work: Path, overrides: dict[str, Any], fuse_lexical: bool,
            folds_scheme: str = "dissimilar", fold_count: int = 3, zero_shot_weight: float = 0.0,
            protocol: str = "seen", zero_shot_lists: bool = False, new_products: bool = True):
    """(store, train lists (cross-fitted), dev lists, val lists, table, lexical, history, which val lists are about
    never-trained products, all training lists as ``Folded``) for one dataset; with ``zero_shot_lists``, every list
    from the zero-shot vectors."""
    from vitrine.catalog.datasets import load_splits
    from vitrine.config import RerankConfig
    from vitrine.rerank.train import training_queries, unseen_share

    splits = load_splits(spec, protocol=protocol)
    store = build_store(work / data_name, splits)
    products = {p.id: p for p in store.catalog}
    queries = training_queries(splits, products)
    zero_shot = embedder_for(store, None).encode_queries([q.query for q in queries])
    config = RerankConfig(new_products=new_products)
    # rerank.new_products: as many products held out whole from a fold as the catalog has products without queries.
    whole = unseen_share(queries, len(products)) if config.new_products else 0.0
    start = time.perf_counter()
    if zero_shot_lists:
        train_lists, train_keys, val_lists, table, lexical, history = zero_shot_lists_of(
            store, splits, queries, zero_shot, fuse_lexical, whole, config.seed)
        how = "from the zero-shot vectors"
    else:
        train_lists, train_keys, val_lists, table, lexical, history = cross_fitted(
            store, splits, queries, zero_shot, overrides, fuse_lexical, folds_scheme, fold_count, zero_shot_weight,
            whole)
        how = "cross-fitted"
    print(f"  lists: {len(train_lists)} train ({how}; a share {whole:.2f} of the products held out whole), "
          f"{len(val_lists)} val, history {len(history)} past queries, {time.perf_counter() - start:.0f} s", flush=True)
    # How alike the two kinds of list are: a reranker learns the mistakes of the training lists' retrievers.
    print("  retrieval order, training lists: " + _summary(list_quality(train_lists)) + "; val lists: "
          + _summary(list_quality(val_lists)), flush=True)
    held = dev_keys(queries, zero_shot, folds_scheme, config.dev_fraction, config.seed, whole)
    dev = [found for found, key in zip(train_lists, train_keys) if key in held]
    train = [found for found, key in zip(train_lists, train_keys) if key not in held]
    never_trained = np.array([bool(set(q.relevant) & splits.held_out) for q in splits.val])
    folded = Folded(train_lists, train_keys, fold_keys(queries, zero_shot, folds_scheme, fold_count, whole), queries,
                    zero_shot, whole, folds_scheme)
    return store, train, dev, val_lists, table, lexical, history, never_trained, folded


def cross_fitted(store, splits, queries, zero_shot: np.ndarray, overrides: dict[str, Any], fuse_lexical: bool,
                 folds_scheme: str, fold_count: int, zero_shot_weight: float, whole: float):
    """(train lists, their query keys, val lists, table, lexical, history): each fold's lists from a retriever
    trained on the other folds, the val lists from one trained on them all."""
    import vitrine
    from vitrine.rerank.features import ProductTable, catalog_entries, product_table
    from vitrine.rerank.train import build_lists, query_history, val_queries

    products = {p.id: p for p in store.catalog}
    folds = fold_keys(queries, zero_shot, folds_scheme, fold_count, whole)
    prefix = (("" if folds_scheme == "random" else f"{folds_scheme}-") + ("" if fold_count == 2 else f"{fold_count}-")
              + (f"whole{whole:.2f}-" if whole else ""))  # retrievers are reused by name: the name says the folds
    for f in range(fold_count):
        others = set().union(*(folds[g] for g in range(fold_count) if g != f))
        train_retriever(store, splits, f"{prefix}fold{f}", others, overrides)
    train_retriever(store, splits, "full", None, overrides)
    store.config({"embedding.kind": "trained", "embedding.model": "full",
                  "embedding.zero_shot_weight": zero_shot_weight}).save(store.config_path)
    engine = vitrine.open(store)
    engine.sync(progress=False)
    lexical = engine.lexical
    entries = catalog_entries(store)
    train_lists, train_keys = [], []
    for f in range(fold_count):
        # The fold's retriever was trained on the other folds' queries: they are its history, as the
        # whole training split is the val retriever's.
        embedder = embedder_for(store, f"{prefix}fold{f}", zero_shot_weight)
        table = ProductTable.build(entries, embedder)
        past = [q for q in queries if q.key not in folds[f]]
        history = query_history(past, embedder.encode_queries([q.query for q in past]), table)
        fold = [q for q in queries if q.key in folds[f]]
        train_lists += build_lists(fold, embedder, table, k=K, lexical=lexical, fuse_lexical=fuse_lexical,
                                   history=history)
        train_keys += [q.key for q in fold]
    table = product_table(store, engine.embedder)
    history = query_history(queries, engine.embedder.encode_queries([q.query for q in queries]), table)
    val_lists = build_lists(val_queries(splits, products), engine.embedder, table, k=K, lexical=lexical,
                            fuse_lexical=fuse_lexical, history=history)
    return train_lists, train_keys, val_lists, table, lexical, history


def zero_shot_lists_of(store, splits, queries, zero_shot: np.ndarray, fuse_lexical: bool, whole: float, seed: int):
    """(train lists, their query keys, val lists, table, lexical, history) from the zero-shot vectors, as
    ``vitrine train-reranker`` builds them over a store without trained towers: no fold retrievers, the training
    lists' history without the products held out whole, the val lists' with every training query."""
    import vitrine
    from vitrine.rerank.features import product_table
    from vitrine.rerank.train import build_lists, held_out_whole, history_without, query_history, val_queries

    products = {p.id: p for p in store.catalog}
    store.config({"embedding.kind": "zeroshot"}).save(store.config_path)
    engine = vitrine.open(store)
    engine.sync(progress=False)
    table = product_table(store, engine.embedder)
    history = query_history(queries, zero_shot, table)
    past = history_without(queries, zero_shot, table, held_out_whole(queries, whole, seed))
    train_lists = build_lists(queries, engine.embedder, table, k=K, lexical=engine.lexical, fuse_lexical=fuse_lexical,
                              history=past, query_vectors=zero_shot)
    val_lists = build_lists(val_queries(splits, products), engine.embedder, table, k=K, lexical=engine.lexical,
                            fuse_lexical=fuse_lexical, history=history)
    return train_lists, [q.key for q in queries], val_lists, table, engine.lexical, history


def list_quality(lists) -> dict[str, float]:
    from vitrine.rerank.metrics import list_metrics

    return list_metrics([found.levels.tolist() for found in lists], [found.ideal for found in lists], K)


def _summary(row: dict[str, float]) -> str:
    return ", ".join(f"{key} {row[key]:.4f}" for key in ("instance_hit_rate", "ndcg@10"))


def as_configured(lists, config):
    """The lists as a reranker of ``config`` reads them (built with every input; by default it reads the scalars)."""
    lists = lists if config.vector_inputs else without_vectors(lists)
    return lists if config.history else without_history(lists)


CV_STRATEGIES = {"retrieval only": "retrieval", "pointwise": "pointwise", "+ hybrid merge": "hybrid"}


def cross_validate(folded: Folded, config, seeds: int, val: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """The training queries reranked by models that never saw them: for each cross-fitting fold, the default
    reranker trained on the other folds' lists (their held-back part picks the epoch and calibrates r, as for val)
    ranks the fold's lists. Per-query figures (mean over ``seeds``) of retrieval, pointwise and hybrid; the hybrid's
    paired differences over these queries and over them together with val's (``val``: ``run_dataset``'s per-query
    figures). On the same lists the difference between two rerankers needs no val split to be measured, and the
    training split has many times val's queries."""
    from dataclasses import replace

    from vitrine.rerank.metrics import mean_metrics, paired_difference
    from vitrine.rerank.train import evaluate_queries, train_reranker

    index = {q.key: i for i, q in enumerate(folded.queries)}
    runs: dict[str, list[dict[str, np.ndarray]]] = {label: [] for label in CV_STRATEGIES}
    start = time.perf_counter()
    for seed in range(seeds):
        seeded = replace(config, seed=seed)
        figures: dict[str, list[dict[str, np.ndarray]]] = {label: [] for label in CV_STRATEGIES}
        for fold in folded.folds:
            rest = [i for i, key in enumerate(folded.keys) if key not in fold]
            rest_queries = [folded.queries[index[folded.keys[i]]] for i in rest]
            held = dev_keys(rest_queries, folded.vectors[[index[folded.keys[i]] for i in rest]], folded.scheme,
                            seeded.dev_fraction, seed, folded.whole)
            reranker, _ = train_reranker([folded.lists[i] for i in rest if folded.keys[i] not in held],
                                         [folded.lists[i] for i in rest if folded.keys[i] in held], seeded)
            test = [found for found, key in zip(folded.lists, folded.keys) if key in fold]
            for label, strategy in CV_STRATEGIES.items():
                figures[label].append(evaluate_queries(reranker, test, strategy, K))
        for label in CV_STRATEGIES:
            runs[label].append({metric: np.concatenate([part[metric] for part in figures[label]])
                                for metric in figures[label][0]})
    per_query = {label: {metric: np.mean([run[metric] for run in runs[label]], axis=0) for metric in runs[label][0]}
                 for label in CV_STRATEGIES}
    pooled = {label: {metric: np.concatenate([per_query[label][metric], val[label][metric]])
                      for metric in per_query[label]} for label in CV_STRATEGIES}
    comparisons = {f"{where}: hybrid - {other}": {
        metric: paired_difference(queries["+ hybrid merge"][metric], queries[other][metric])
        for metric in ("instance_hit_rate", "ndcg@10")}
        for where, queries in (("training queries", per_query), ("training and val queries", pooled))
        for other in ("pointwise", "retrieval only")}
    return {"rows": {label: mean_metrics(values) for label, values in per_query.items()},
            "queries": len(folded.lists), "val_queries": len(next(iter(val.values()))["ndcg@10"]), "seeds": seeds,
            "paired_differences": comparisons, "seconds": time.perf_counter() - start}


def without_history(lists):
    """The same lists as a reranker without query history sees them (no product has past queries)."""
    from dataclasses import replace

    from vitrine.rerank.history import NO_HISTORY

    blank = []
    for found in lists:
        items = found.items.copy()
        items[:, found.spec.column("history_cos")] = NO_HISTORY
        items[:, found.spec.column("history_gap")] = 0.0
        items[:, found.spec.column("history_count_rel")] = 0.0
        blank.append(replace(found, items=items))
    return blank


def without_vectors(lists):
    """The same lists as a reranker that reads only the scalars sees them (``rerank.vector_inputs`` off)."""
    from dataclasses import replace

    return [replace(found, query=found.query[-2:], items=found.items[:, found.spec.vector_columns:],
                    spec=found.spec.without_vectors()) if found.spec.vectors else found for found in lists]


def run_dataset(name: str, spec: str, work: Path, overrides: dict[str, Any], fuse_lexical: bool,
                latency_queries: int, results: dict, out_dir: Path, changes: dict[str, Any] | None = None,
                folds_scheme: str = "dissimilar", fold_count: int = 3, seeds: int = 3,
                zero_shot_weight: float = 0.0, protocol: str = "seen", zero_shot_lists: bool = False,
                new_products: bool = True, cv_seeds: int = 0) -> None:
    from dataclasses import replace

    from vitrine.config import RerankConfig
    from vitrine.rerank.calibration import (chance_ece, ece_interval, expected_calibration_error,
                                            reliability_diagram, softmax)
    from vitrine.rerank.metrics import mean_metrics, paired_difference
    from vitrine.rerank.train import calibrate, evaluate_queries, fit_listwise, train_reranker

    print(f"\n== {name} ==", flush=True)
    store, *groups, table, lexical, history, never_trained, folded = prepare(
        name, spec, name, work, overrides, fuse_lexical, folds_scheme, fold_count, zero_shot_weight, protocol,
        zero_shot_lists, new_products)
    config = replace(RerankConfig(new_products=new_products), **(changes or {}))
    # Lists are built with every input; the default reranker reads the scalars only.
    with_vectors = groups
    train, dev, val_lists = [as_configured(group, config) for group in groups]
    start = time.perf_counter()
    # Every model is trained once per seed: on val splits of a few hundred queries, the seed moves a
    # chunk model's hit-rate by about as much as the differences the targets ask about.
    per_seed: list[dict[str, dict[str, np.ndarray]]] = []
    seed_ece: list[float] = []  # of the calibrated r on val, per seed
    val_levels = np.concatenate([found.levels for found in val_lists])
    for seed in range(seeds):
        seeded = replace(config, seed=seed)
        trained, trained_report = train_reranker(train, dev, seeded, history=history if config.history else None)
        models = {"full": trained}
        for key, losses in (("pairwise", ("pairwise",)), ("pairwise+null", ("pairwise", "null"))):
            model, _ = fit_listwise(train, dev, trained.spec, seeded, losses)
            models[key] = type(trained)(trained.spec, model, None, settings=trained.settings)
        per_seed.append({label: evaluate_queries(models[key or "full"], val_lists, strategy, K)
                         for label, key, strategy in VARIANTS})
        seed_ece.append(expected_calibration_error(np.concatenate([e["r"] for e in trained.chunk_scores(val_lists)]),
                                                   val_levels == 0))
        print(f"  seed {seed}: listwise best epoch {trained_report['listwise']['best_epoch']}, pointwise best epoch "
              f"{trained_report['pointwise']['best_epoch']} (0 = the retriever's order); held-back training queries, "
              "NDCG@10: " + ", ".join(f"{key} {value:.4f}" for key, value in trained_report["dev_ndcg@10"].items()),
              flush=True)
        if seed == 0:
            full, report = trained, trained_report
    train_s = time.perf_counter() - start
    print(f"  reranker training {train_s:.0f} s for {seeds} seed(s)", flush=True)
    # Per query, the mean over seeds: the table's figures, and what the paired comparisons resample.
    per_query = {label: {metric: np.mean([figures[label][metric] for figures in per_seed], axis=0)
                         for metric in per_seed[0][label]} for label, _, _ in VARIANTS}
    rows = {label: mean_metrics(values) for label, values in per_query.items()}
    spread = {label: {metric: float(np.std([mean_metrics(figures[label])[metric] for figures in per_seed]))
                      for metric in rows[label]} for label in rows}
    comparisons = {f"hybrid - {other}": {metric: paired_difference(per_query["+ hybrid merge"][metric],
                                                                   per_query[other][metric])
                                         for metric in ("instance_hit_rate", "ndcg@10")}
                   for other in ("pointwise", "retrieval only")}
    if never_trained.any():  # --protocol new: the never-trained products' own queries
        for label in rows:
            rows[label]["never_trained_hit_rate"] = float(per_query[label]["instance_hit_rate"][never_trained].mean())
        comparisons["hybrid - retrieval only, never-trained products"] = {"instance_hit_rate": paired_difference(
            per_query["+ hybrid merge"]["instance_hit_rate"][never_trained],
            per_query["retrieval only"]["instance_hit_rate"][never_trained])}
    seed0_rows = {label: mean_metrics(values) for label, values in per_seed[0].items()}
    parts = ablate_parts(with_vectors, config, seed0_rows)
    cross_validated = (cross_validate(replace(folded, lists=as_configured(folded.lists, config)), config, cv_seeds,
                                      per_query) if cv_seeds else None)

    # calibration of r on val: raw softmax vs each calibrator fitted on the dev split (the default's is the model's)
    entries = full.chunk_scores(val_lists)
    logits = np.concatenate([e["logits"] for e in entries])
    matches = val_levels == 0
    curves = {"raw": softmax(logits)[:, 0]}
    for kind in CALIBRATORS:
        fitted = type(full)(full.spec, full.listwise, None)
        calibrate(fitted, dev, kind)
        curves[kind] = fitted.calibrator(logits)
    calibration = {f"ece_{kind}": expected_calibration_error(r, matches) for kind, r in curves.items()}
    # How far the split itself moves ECE: its range over resampled sets of val queries, and what a perfectly
    # calibrated r of these values would read on this many candidates.
    per_query_r = [entry["r"] for entry in entries]
    _, low, high = ece_interval(per_query_r, [found.levels == 0 for found in val_lists])
    calibration.update({"temperature": full.calibrator.temperature if full.calibrator.kind == "temperature" else None,
                        **report["calibration"], f"ece_{full.calibrator.kind}_per_seed": seed_ece,
                        f"ece_{full.calibrator.kind}_95%_over_queries": [low, high],
                        "ece_if_perfectly_calibrated": chance_ece(np.concatenate(per_query_r))})
    calibration = {key: value for key, value in calibration.items() if value is not None}
    png = reliability_diagram({kind: (r, matches) for kind, r in curves.items()}, out_dir / f"reliability-{name}.png",
                              title=f"{name} val: r = P(instance match)")
    calibration["diagram"] = str(png)
    if name == "crowdflower":
        from sklearn.metrics import cohen_kappa_score

        judged = np.concatenate([found.labelled for found in val_lists])
        predicted = _calibrated_levels(full, logits)
        calibration["qwk_judged"] = float(cohen_kappa_score(val_levels[judged], predicted[judged], weights="quadratic"))
        calibration["judged_candidates"] = int(judged.sum())

    # Rebuilt from the query vectors, which lists with vector inputs carry.
    latency = measure_latency(full, table, lexical, with_vectors[2][:latency_queries], config.threads)
    results[name] = {"zero_shot_weight": zero_shot_weight, "quality": rows, "quality_sd_over_seeds": spread,
                     "seeds": seeds,
                     "paired_differences": comparisons, "parts": parts, "calibration": calibration,
                     "latency_ms": latency,
                     "train_s": train_s,
                     "train_lists": len(train), "dev_lists": len(dev), "val_lists": len(val_lists),
                     "training": report, "cross_validated": cross_validated}
    print_quality(f"{name} (mean over {seeds} seed(s) ± their SD)", rows, len(val_lists), spread)
    print_comparisons(name, comparisons)
    if cross_validated:
        print_cross_validated(name, cross_validated, fold_count)
    print_quality(f"{name} (hybrid: retrieval prior, scalar-only inputs, query history, relational attention)", parts,
                  len(val_lists))
    print(f"\n{name} calibration of r on val (seed 0; the last figure per seed): " + ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {' '.join(f'{x:.4f}' for x in v)}" if isinstance(v, list)
        else f"{k} {v}" for k, v in calibration.items()))
    print_latency(name, latency, config.threads)
    results[name]["targets"] = target_status(comparisons, seed_ece, latency, cross_validated)
    print_targets(name, results[name]["targets"])


ECE_TARGET = 0.05


def beats(difference: tuple[float, float, float]) -> str:
    """A paired difference's verdict: ``met`` when its whole interval is above 0, ``lost`` when below, else ``tie``."""
    _, low, high = difference
    return "met" if low > 0 else "lost" if high < 0 else "tie"


def target_status(comparisons: dict, seed_ece: list[float], latency: dict[str, float],
                  cross_validated: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Each of the issue's targets with its verdict and the figure behind it, as this run measured it. A "beats"
    target is met when the paired interval lies above 0; with ``--cross-validate`` the verdict reads the interval
    over the training and val queries together (several times val's queries), and val's is shown beside it."""
    status = []
    for other in ("retrieval only", "pointwise"):
        for metric in ("instance_hit_rate", "ndcg@10"):
            on_val = comparisons[f"hybrid - {other}"][metric]
            evidence = f"val {_interval(on_val)}"
            decisive = on_val
            if cross_validated:
                decisive = cross_validated["paired_differences"][f"training and val queries: hybrid - {other}"][metric]
                evidence = f"training and val queries {_interval(decisive)}; " + evidence
            status.append({"target": f"hybrid beats {other} on {metric}", "verdict": beats(decisive),
                           "evidence": evidence})
    ece_met = all(ece <= ECE_TARGET for ece in seed_ece)
    status.append({"target": f"ECE of r <= {ECE_TARGET}", "verdict": "met" if ece_met else "missed",
                   "evidence": "per seed " + " / ".join(f"{ece:.4f}" for ece in seed_ece)})
    for target, key, limit in (("hybrid / sliding p50 <= 0.5 (onnx)", "onnx hybrid/sliding p50", 0.5),
                               ("hybrid / pointwise p50 <= 2 (onnx)", "onnx hybrid/pointwise p50", 2.0),
                               ("reranking 50 candidates <= 20 ms p50 (onnx hybrid)", "onnx hybrid p50 2t", 20.0)):
        status.append({"target": target, "verdict": "met" if latency[key] <= limit else "missed",
                       "evidence": f"{latency[key]:.2f}"})
    return status


def _interval(difference: tuple[float, float, float]) -> str:
    mean, low, high = difference
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def print_targets(name: str, status: list[dict[str, str]]) -> None:
    print(f"\n{name}: the issue's targets, as this run measured them (met / tie / lost / missed)")
    for row in status:
        print(f"  {row['verdict']:>6}  {row['target']}: {row['evidence']}", flush=True)


PARTS = [  # label, retrieval prior, raw vector inputs, query history, relational attention, absolute prior
    ("hybrid as the paper trains it (random start, vector inputs, no history)", False, True, False, False, "retrieval"),
    ("+ retrieval prior", True, True, False, False, "retrieval"),
    ("+ retrieval prior, scalars only", True, False, False, False, "retrieval"),
    ("+ retrieval prior, scalars only, + query history", True, False, True, False, "retrieval"),
    ("+ retrieval prior, scalars only, + query history, + relational attention", True, False, True, True, "retrieval"),
    ("+ retrieval prior, vector inputs, + query history, + relational attention", True, True, True, True, "retrieval"),
    ("the default, but r starts from the local score (rerank.absolute_prior = local)", True, False, True, True,
     "local"),
]


def ablate_parts(groups, config, rows: dict) -> dict[str, dict[str, float]]:
    """Hybrid with this project's four departures from the paper's heads switched on and off in turn:
    the retrieval prior, reading the scalars only (not the raw vectors), the query-history features,
    relational attention; and the option of starting r from the local score (``absolute_prior``).
    ``groups``: (train, dev, val) lists built with every input; the default configuration's row is
    the ablation table's "+ hybrid merge" and is not trained again."""
    from dataclasses import replace

    from vitrine.rerank.train import evaluate_lists, train_reranker

    parts = {"retrieval only": rows["retrieval only"]}
    for label, prior, vectors, history, relational, absolute_prior in PARTS:
        if (prior, vectors, history, relational, absolute_prior) == (
                config.retrieval_prior, config.vector_inputs, config.history, config.relational, config.absolute_prior):
            parts[label + " (the default)"] = rows["+ hybrid merge"]
            continue
        lists = groups if vectors else [without_vectors(group) for group in groups]
        lists = lists if history else [without_history(group) for group in lists]
        model, report = train_reranker(lists[0], lists[1], replace(config, retrieval_prior=prior, relational=relational,
                                                                   absolute_prior=absolute_prior), pointwise=False)
        parts[label] = evaluate_lists(model, lists[2], "hybrid", K)
        print(f"  {label}: listwise best epoch {report['listwise']['best_epoch']}, held-back NDCG@10 of the hybrid "
              f"{report['dev_ndcg@10']['hybrid']:.4f}", flush=True)
    return parts


def _calibrated_levels(reranker, logits: np.ndarray) -> np.ndarray:
    from vitrine.rerank.calibration import softmax

    t = reranker.calibrator.temperature if reranker.calibrator.kind == "temperature" else 1.0
    return softmax(logits / t).argmax(axis=1)


def measure_latency(reranker, table, lexical, lists, model_threads: int) -> dict[str, float]:
    """Per query, one at a time: features (from the query vector and retrieved keys) + model + merge,
    with the models in ONNX Runtime (as served, ``rerank.runtime``) and in eager PyTorch. "Threads" are the
    process's (PyTorch's); the ONNX sessions get at most ``model_threads`` of them (``rerank.threads``)."""
    import torch

    builder = reranker.builder(table, lexical)

    def rerank(found, strategy: str) -> None:
        rebuilt = builder.build(found.query[:-2], found.text, bool(found.query[-1]), found.keys, found.retrieval,
                                **reranker.relations_read(strategy))
        reranker.rank_lists([rebuilt], strategy)

    figures = {}
    for runtime in ("onnx", "torch"):
        for threads in (2, 1):
            torch.set_num_threads(threads)
            reranker.serve_with(runtime, min(threads, model_threads) if model_threads else threads)
            for strategy in STRATEGY_LATENCY:
                rerank(lists[0], strategy)  # warm up
                times = []
                for found in lists:
                    start = time.perf_counter()
                    rerank(found, strategy)
                    times.append((time.perf_counter() - start) * 1000)
                for q in (50, 99):
                    figures[f"{runtime} {strategy} p{q} {threads}t"] = float(np.percentile(times, q))
    reranker.serve_with("torch")
    torch.set_num_threads(2)
    for runtime in ("onnx", "torch"):
        figures[f"{runtime} hybrid/sliding p50"] = (figures[f"{runtime} hybrid p50 2t"]
                                                    / figures[f"{runtime} sliding p50 2t"])
        figures[f"{runtime} hybrid/pointwise p50"] = (figures[f"{runtime} hybrid p50 2t"]
                                                      / figures[f"{runtime} pointwise p50 2t"])
    return figures


STRATEGY_LATENCY = ("pointwise", "hybrid", "sliding")


def print_quality(name: str, rows: dict[str, dict[str, float]], queries: int,
                  spread: dict[str, dict[str, float]] | None = None, where: str = "val") -> None:
    columns = ["instance_hit_rate", "concept_hit_rate@1", "ndcg@10"]
    columns += [c for c in ("never_trained_hit_rate",) if any(c in row for row in rows.values())]
    print(f"\n{name} {where}, K = {K} candidates ({queries} queries)")
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, row in rows.items():
        # Rows that cannot vary with the seed (retrieval) show no spread.
        varies = bool(spread) and any(spread[label].values())
        cells = [f"{row[c]:.4f}" + (f" ± {spread[label][c]:.4f}" if varies and c in spread[label] else "")
                 for c in columns]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def print_comparisons(name: str, comparisons: dict[str, dict[str, tuple[float, float, float]]]) -> None:
    print(f"\n{name} paired differences on val queries (per-query figures averaged over seeds; "
          "mean [95% bootstrap interval]; an interval across 0 is a tie the split cannot break)")
    print_differences(comparisons)


def print_differences(comparisons: dict[str, dict[str, tuple[float, float, float]]]) -> None:
    for label, metrics in comparisons.items():
        print(f"  {label}: " + "; ".join(f"{metric} {_interval(difference)}" for metric, difference in metrics.items()),
              flush=True)


def print_cross_validated(name: str, figures: dict[str, Any], fold_count: int) -> None:
    print_quality(name, figures["rows"], figures["queries"],
                  where=f"training queries, cross-validated ({fold_count} folds, each reranked by models trained on "
                        f"the others; mean over {figures['seeds']} seed(s); {figures['seconds']:.0f} s)")
    print(f"\n{name} paired differences over {figures['queries']} training queries, and over them with the "
          f"{figures['val_queries']} val queries (mean [95% bootstrap interval])")
    print_differences(figures["paired_differences"])


def print_latency(name: str, latency: dict[str, float], model_threads: int) -> None:
    print(f"\n{name} rerank latency per query, K = {K} (ms; ONNX Runtime sessions on "
          f"{model_threads or 'as many'} intra-op thread(s) at most, rerank.threads)")
    print("| runtime | strategy | p50, 2 threads | p99, 2 threads | p50, 1 thread | p99, 1 thread |")
    print("|---|---|---|---|---|---|")
    for runtime in ("onnx", "torch"):
        for s in STRATEGY_LATENCY:
            print(f"| {runtime} | {s} | " + " | ".join(f"{latency[f'{runtime} {s} p{q} {t}t']:.2f}"
                                                    for t in (2, 1) for q in (50, 99)) + " |")
    for runtime in ("onnx", "torch"):
        print(f"{runtime}: hybrid / sliding p50 = {latency[f'{runtime} hybrid/sliding p50']:.2f} (target <= 0.5); "
              f"hybrid / pointwise p50 = {latency[f'{runtime} hybrid/pointwise p50']:.2f} (target <= 2)", flush=True)


def main() -> None:
    from vitrine.config import data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder with the datasets (default: $VITRINE_DATA)")
    parser.add_argument("--work", type=Path, default=Path(".vitrine/bench-rerank"), help="stores, caches, retrievers")
    parser.add_argument("--only", default="grocery,crowdflower", help="comma-separated datasets")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=None, help="reranker epochs (default: rerank.epochs, 40)")
    parser.add_argument("--layers", type=int, default=None,
                        help="transformer blocks of the chunk model (default: rerank.layers, 1)")
    parser.add_argument("--folds", choices=("dissimilar", "random"), default="dissimilar",
                        help="how training queries are dealt to the cross-fitting folds (see cross_fit_folds)")
    parser.add_argument("--fold-count", type=int, default=3,
                        help="cross-fitting folds, one retriever each (3: a training query's nearest same-product "
                             "photo in the other folds is then as far as a val photo's in the training split)")
    parser.add_argument("--zero-shot-weight", type=float, default=0.0,
                        help="serve the retrievers beside the frozen backbones' zero-shot vectors with this weight "
                             "(embedding.zero_shot_weight; 0 = towers alone)")
    parser.add_argument("--retriever", choices=("towers", "prototype", "zero-shot"), default="towers",
                        help="Grocery's retrievers: contrastive towers (default) or the prototype-ID model of issue 4 "
                             "(PROTOTYPE_RETRIEVER; CrowdFlower keeps its towers); zero-shot: every dataset's lists "
                             "from the zero-shot vectors, no retriever trained, nothing cross-fitted")
    parser.add_argument("--new-products", action=argparse.BooleanOptionalAction, default=True,
                        help="rerank.new_products: hold a share of the products out whole, as many as the catalog "
                             "has without training queries (--no-new-products: the lists before that setting)")
    parser.add_argument("--protocol", choices=("seen", "new"), default="seen",
                        help="Grocery: 'new' trains without the never-trained products of issue 3's protocol and "
                             "reports hit@1 on their val photos too")
    parser.add_argument("--cross-validate", type=int, default=0, metavar="SEEDS",
                        help="also rerank every training query with models trained on the other cross-fitting folds "
                             "(this many seeds; 0: off) and compare hybrid and pointwise over them and val together")
    parser.add_argument("--seeds", type=int, default=3,
                        help="train the ablation's models with this many seeds and report their mean (the SD over "
                             "seeds beside it); calibration, latency and the parts table use seed 0")
    args = parser.parse_args()
    data = args.data or data_dir()
    import torch

    torch.set_num_threads(2)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    datasets = {
        "grocery": (f"grocery:{data / 'grocery-store'}", PROTOTYPE_RETRIEVER if args.retriever == "prototype" else {},
                    False),
        # The best CrowdFlower retriever of the trained-embeddings benchmark: no keyword pairs, + BM25 (search.fusion).
        "crowdflower": (f"crowdflower:{data / 'crowdflower-search-relevance'}",
                        {"training.keyword_pairs": False, "training.keyword_mask": 2.0}, True),
    }
    for name in args.only.split(","):
        spec, overrides, fuse = datasets[name.strip()]
        changes = {key: value for key, value in (("epochs", args.epochs), ("layers", args.layers)) if value}
        run_dataset(name.strip(), spec, args.work, overrides, fuse, args.latency_queries, results, args.work,
                    changes, args.folds, args.fold_count, args.seeds, args.zero_shot_weight,
                    args.protocol if name.strip() == "grocery" else "seen", args.retriever == "zero-shot",
                    args.new_products, args.cross_validate)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
