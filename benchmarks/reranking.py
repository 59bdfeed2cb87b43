"""Reranking benchmark (issue 5): Pailitao-VL's ablation on Grocery val and CrowdFlower val, latency,
calibration, in one run.

    python benchmarks/reranking.py [--data ../shared/data] [--work .vitrine/bench-rerank] \
        [--only grocery,crowdflower] [--json out.json] [--latency-queries 100]

For each dataset: the best retriever we can afford (trained towers, default config; CrowdFlower fused
with BM25 by RRF as in the trained-embeddings benchmark) gives K = 50 candidates per query.

Training lists are *cross-fitted*: the training queries are split in two folds, a retriever is
trained on each fold and builds the lists of the other, so the reranker learns from the mistakes a
retriever makes on queries it has not seen, which is what it meets at val time. Folds keep look-alike
queries of one product together (``--folds dissimilar``, the default; see ``cross_fit_folds``): photos
taken in bursts would otherwise have near-copies on both sides. The val lists come from
a retriever trained on the whole training split. Retrievers are trained once and reused from --work.

Variants (cumulative, as in the paper's ablation): retrieval only; pointwise; chunk listwise (pairwise
loss, local scores sorted across chunks); + NULL (pairwise + NULL losses, local − NULL); + absolute
scorer (all three losses, sorted by r); + hybrid merge (same model, local order within chunks, K-way
merge by r). Every model uses the defaults: a retrieval prior on its heads and the query-history
features (past queries = the training queries the list's retriever was trained on). A second table
takes those two away in turn (hybrid without history; without history and prior, the paper's plain
heads). Latency: one query at a time, 2 threads, feature building + model + merge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trained_embeddings import build_store  # noqa: E402  (one way to build benchmark stores)

K = 50
FOLDS = 2
VARIANTS = [("retrieval only", None, "retrieval"), ("pointwise", "full", "pointwise"),
            ("chunk listwise", "pairwise", "local"), ("+ NULL", "pairwise+null", "listwise"),
            ("+ absolute scorer", "full", "absolute"), ("+ hybrid merge", "full", "hybrid")]


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


def embedder_for(store, name: str | None):
    """The trained towers models/NAME, or the zero-shot embedder for ``None``."""
    from vitrine.encoders import FeatureCache
    from vitrine.engine.factory import build_embedder

    config = store.config({"embedding.kind": "trained", "embedding.model": name} if name else {"embedding.kind": "zeroshot"})
    return build_embedder(config, store.models_dir, None, FeatureCache(store.root / "cache" / "features.sqlite"))


def fold_keys(queries, store, scheme: str) -> list[set[str]]:
    """The query keys of each cross-fitting fold: ``dissimilar`` keeps look-alike queries of a product in
    one fold (``cross_fit_folds`` on zero-shot vectors), ``random`` deals queries at random."""
    from vitrine.rerank.train import cross_fit_folds

    if scheme == "random":
        order = np.random.default_rng(0).permutation(len(queries))
        return [{queries[i].key for i in order[f::FOLDS]} for f in range(FOLDS)]
    vectors = embedder_for(store, None).encode_queries([q.query for q in queries])
    assigned = cross_fit_folds(queries, vectors, FOLDS)
    return [{q.key for q, fold in zip(queries, assigned) if fold == f} for f in range(FOLDS)]


def prepare(dataset: str, spec: str, data_name: str, work: Path, overrides: dict[str, Any], fuse_lexical: bool,
            folds_scheme: str = "dissimilar"):
    """(train lists (cross-fitted), val lists, table, lexical) for one dataset."""
    import vitrine
    from vitrine.catalog.datasets import load_splits
    from vitrine.rerank.features import ProductTable, catalog_entries, product_table
    from vitrine.rerank.train import build_lists, query_history, training_queries, val_queries

    splits = load_splits(spec)
    store = build_store(work / data_name, splits)
    products = {p.id: p for p in store.catalog}
    queries = training_queries(splits, products)
    folds = fold_keys(queries, store, folds_scheme)
    prefix = "" if folds_scheme == "random" else f"{folds_scheme}-"
    for f in range(FOLDS):
        train_retriever(store, splits, f"{prefix}fold{f}", set().union(*(folds[g] for g in range(FOLDS) if g != f)),
                        overrides)
    train_retriever(store, splits, "full", None, overrides)
    store.config({"embedding.kind": "trained", "embedding.model": "full"}).save(store.config_path)
    engine = vitrine.open(store)
    engine.sync(progress=False)
    lexical = engine.lexical
    entries = catalog_entries(store)
    train_lists = []
    start = time.perf_counter()
    for f in range(FOLDS):
        # The fold's retriever was trained on the other folds' queries: they are its history, as the
        # whole training split is the val retriever's.
        embedder = embedder_for(store, f"{prefix}fold{f}")
        table = ProductTable.build(entries, embedder)
        history = query_history([q for q in queries if q.key not in folds[f]], embedder, table)
        train_lists += build_lists([q for q in queries if q.key in folds[f]], embedder, table, k=K, lexical=lexical,
                                   fuse_lexical=fuse_lexical, history=history)
    table = product_table(store, engine.embedder)
    history = query_history(queries, engine.embedder, table)
    val_lists = build_lists(val_queries(splits, products), engine.embedder, table, k=K, lexical=lexical,
                            fuse_lexical=fuse_lexical, history=history)
    print(f"  lists: {len(train_lists)} train (cross-fitted), {len(val_lists)} val, history {len(history)} past "
          f"queries, {time.perf_counter() - start:.0f} s", flush=True)
    return store, train_lists, val_lists, table, lexical, history


def without_history(lists):
    """The same lists as a reranker without query history sees them (no product has past queries)."""
    from dataclasses import replace

    from vitrine.rerank.features import FeatureSpec
    from vitrine.rerank.history import NO_HISTORY

    spec = FeatureSpec(int(lists[0].query.shape[0]) - 2)
    blank = []
    for found in lists:
        items = found.items.copy()
        items[:, spec.column("history_cos")] = NO_HISTORY
        items[:, spec.column("history_gap")] = 0.0
        items[:, spec.column("history_count")] = 0.0
        blank.append(replace(found, items=items))
    return blank


def run_dataset(name: str, spec: str, work: Path, overrides: dict[str, Any], fuse_lexical: bool,
                latency_queries: int, results: dict, out_dir: Path, epochs: int | None = None,
                folds_scheme: str = "dissimilar") -> None:
    from vitrine.config import RerankConfig
    from vitrine.rerank.calibration import expected_calibration_error, reliability_diagram, softmax
    from vitrine.rerank.train import calibrate, evaluate_lists, fit_listwise, split_dev, train_reranker

    print(f"\n== {name} ==", flush=True)
    store, train_lists, val_lists, table, lexical, history = prepare(name, spec, name, work, overrides, fuse_lexical,
                                                                    folds_scheme)
    config = RerankConfig()
    if epochs:
        config.epochs = epochs
    train_rows, dev_rows = split_dev(train_lists, config.dev_fraction, config.seed)
    train, dev = [train_lists[i] for i in train_rows], [train_lists[i] for i in dev_rows]
    start = time.perf_counter()
    full, report = train_reranker(train, dev, config, history=history)
    models = {"full": full}
    for key, losses in (("pairwise", ("pairwise",)), ("pairwise+null", ("pairwise", "null"))):
        model, _ = fit_listwise(train, dev, full.spec, config, losses)
        variant = type(full)(full.spec, model, None, settings=full.settings)
        models[key] = variant
    train_s = time.perf_counter() - start
    rows: dict[str, dict[str, float]] = {}
    for label, key, strategy in VARIANTS:
        rows[label] = evaluate_lists(models.get(key or "full"), val_lists, strategy, K)
    print(f"  reranker training {train_s:.0f} s (listwise best epoch {report['listwise']['best_epoch']}, "
          f"pointwise best epoch {report['pointwise']['best_epoch']}; 0 = the retriever's order)", flush=True)
    parts = ablate_parts(train, dev, val_lists, config, rows)

    # calibration of r on val: raw softmax vs calibrated on the dev split
    entries = full.chunk_scores(val_lists)
    logits = np.concatenate([e["logits"] for e in entries])
    levels = np.concatenate([found.levels for found in val_lists])
    raw, calibrated = softmax(logits)[:, 0], np.concatenate([e["r"] for e in entries])
    isotonic = type(full)(full.spec, full.listwise, None)
    calibrate(isotonic, dev, "isotonic")
    iso = isotonic.calibrator(logits)
    calibration = {"ece_raw": expected_calibration_error(raw, levels == 0),
                   f"ece_{full.calibrator.kind}": expected_calibration_error(calibrated, levels == 0),
                   "ece_isotonic": expected_calibration_error(iso, levels == 0),
                   "temperature": full.calibrator.temperature, **report["calibration"]}
    png = reliability_diagram({"raw": (raw, levels == 0), full.calibrator.kind: (calibrated, levels == 0),
                               "isotonic": (iso, levels == 0)}, out_dir / f"reliability-{name}.png",
                              title=f"{name} val: r = P(instance match)")
    calibration["diagram"] = str(png)
    if name == "crowdflower":
        from sklearn.metrics import cohen_kappa_score

        judged = np.concatenate([found.labelled for found in val_lists])
        predicted = _calibrated_levels(full, logits)
        calibration["qwk_judged"] = float(cohen_kappa_score(levels[judged], predicted[judged], weights="quadratic"))
        calibration["judged_candidates"] = int(judged.sum())

    latency = measure_latency(models["full"], table, lexical, val_lists[:latency_queries])
    results[name] = {"quality": rows, "parts": parts, "calibration": calibration, "latency_ms": latency, "train_s": train_s,
                     "train_lists": len(train), "dev_lists": len(dev), "val_lists": len(val_lists),
                     "training": report}
    print_quality(name, rows, len(val_lists))
    print_quality(f"{name} (hybrid: what the retrieval prior and the query history add)", parts, len(val_lists))
    print(f"\n{name} calibration of r on val: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in calibration.items()))
    print_latency(name, latency)


def ablate_parts(train, dev, val_lists, config, rows: dict) -> dict[str, dict[str, float]]:
    """Hybrid with this project's two additions taken away in turn: the query-history features, then the
    retrieval prior too (the paper's plain heads, trained from random)."""
    from dataclasses import replace

    from vitrine.rerank.train import evaluate_lists, train_reranker

    parts = {"retrieval only": rows["retrieval only"]}
    for label, prior, history in (("hybrid, neither", False, False), ("hybrid, + retrieval prior", True, False),
                                  ("hybrid, + retrieval prior + query history", True, True)):
        if prior and history:
            parts[label] = rows["+ hybrid merge"]
            continue
        lists = (train, dev, val_lists) if history else tuple(without_history(group) for group in (train, dev, val_lists))
        model, report = train_reranker(lists[0], lists[1], replace(config, retrieval_prior=prior), pointwise=False)
        parts[label] = evaluate_lists(model, lists[2], "hybrid", K)
        print(f"  {label}: listwise best epoch {report['listwise']['best_epoch']}", flush=True)
    return parts


def _calibrated_levels(reranker, logits: np.ndarray) -> np.ndarray:
    from vitrine.rerank.calibration import softmax

    t = reranker.calibrator.temperature if reranker.calibrator.kind == "temperature" else 1.0
    return softmax(logits / t).argmax(axis=1)


def measure_latency(reranker, table, lexical, lists, repeats: int = 1) -> dict[str, float]:
    """Per query, one at a time: features (from the query vector and retrieved keys) + model + merge."""
    import torch

    builder = reranker.builder(table, lexical)
    figures = {}
    for threads, suffix in ((2, ""), (1, " (1 thread)")):
        torch.set_num_threads(threads)
        for strategy in ("pointwise", "hybrid", "sliding"):
            reranker.rank_lists([lists[0]], strategy)  # warm up
            times = []
            for found in lists:
                vector = found.query[:-2]
                start = time.perf_counter()
                rebuilt = builder.build(vector, found.text, bool(found.query[-1]), found.keys, found.retrieval)
                reranker.rank_lists([rebuilt], strategy)
                times.append((time.perf_counter() - start) * 1000)
            figures[f"{strategy}_p50{suffix}"] = float(np.percentile(times, 50))
            figures[f"{strategy}_p99{suffix}"] = float(np.percentile(times, 99))
    torch.set_num_threads(2)
    figures["hybrid/sliding p50"] = figures["hybrid_p50"] / figures["sliding_p50"]
    figures["hybrid/pointwise p50"] = figures["hybrid_p50"] / figures["pointwise_p50"]
    return figures


def print_quality(name: str, rows: dict[str, dict[str, float]], queries: int) -> None:
    columns = ["instance_hit_rate", "concept_hit_rate@1", "ndcg@10"]
    print(f"\n{name} val, K = {K} candidates ({queries} queries)")
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |", flush=True)


def print_latency(name: str, latency: dict[str, float]) -> None:
    print(f"\n{name} rerank latency per query, K = {K}, 2 threads (ms)")
    print("| strategy | p50 | p99 | p50, 1 thread | p99, 1 thread |")
    print("|---|---|---|---|---|")
    for s in ("pointwise", "hybrid", "sliding"):
        print(f"| {s} | {latency[f'{s}_p50']:.2f} | {latency[f'{s}_p99']:.2f} | "
              f"{latency[f'{s}_p50 (1 thread)']:.2f} | {latency[f'{s}_p99 (1 thread)']:.2f} |")
    print(f"hybrid / sliding p50 = {latency['hybrid/sliding p50']:.2f} (target <= 0.5); "
          f"hybrid / pointwise p50 = {latency['hybrid/pointwise p50']:.2f} (target <= 2)", flush=True)


def main() -> None:
    from vitrine.config import data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder with the datasets (default: $VITRINE_DATA)")
    parser.add_argument("--work", type=Path, default=Path(".vitrine/bench-rerank"), help="stores, caches, retrievers")
    parser.add_argument("--only", default="grocery,crowdflower", help="comma-separated datasets")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=None, help="reranker epochs (default: rerank.epochs, 40)")
    parser.add_argument("--folds", choices=("dissimilar", "random"), default="dissimilar",
                        help="how training queries are dealt to the cross-fitting folds (see cross_fit_folds)")
    args = parser.parse_args()
    data = args.data or data_dir()
    import torch

    torch.set_num_threads(2)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    datasets = {
        "grocery": (f"grocery:{data / 'grocery-store'}", {}, False),
        # The best CrowdFlower retriever of the trained-embeddings benchmark: no keyword pairs, + BM25 (RRF).
        "crowdflower": (f"crowdflower:{data / 'crowdflower-search-relevance'}",
                        {"training.keyword_pairs": False, "training.keyword_mask": 2.0}, True),
    }
    for name in args.only.split(","):
        spec, overrides, fuse = datasets[name.strip()]
        run_dataset(name.strip(), spec, args.work, overrides, fuse, args.latency_queries, results, args.work,
                    args.epochs, args.folds)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
