"""Trained embeddings benchmark (issue 3): ablations on Grocery, CrowdFlower and Shopee in one run.

    python benchmarks/trained_embeddings.py [--data ../shared/data] [--work .vitrine/bench] \
        [--only grocery,finetune,crowdflower,shopee] [--shopee-variants "trained;trained + n-grams"] [--resume] \
        [--json out.json]

Every training run happens in a fresh process (so its wall time and peak memory are its own),
trains through ``vitrine.training.train_store`` exactly as ``vitrine train`` does, re-indexes through
the engine and is evaluated with ``vitrine.evaluation``. Stores and backbone feature caches live in
``--work`` and are reused by later runs; delete it to measure from scratch.

Hyper-parameters are the defaults in ``vitrine.config.TrainingConfig``; the ablation variants only
switch components on and off.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

GROCERY_VARIANTS: dict[str, dict[str, Any]] = {
    "in-batch InfoNCE": {"training.modal_gate": False, "training.memory_bank": 0, "training.hard_negatives": 0},
    "+ memory bank": {"training.modal_gate": False, "training.memory_bank": 4096, "training.hard_negatives": 0},
    "+ hard negatives": {"training.modal_gate": False, "training.memory_bank": 4096, "training.hard_negatives": 8},
    "+ modal adaptation": {"training.modal_gate": True, "training.memory_bank": 4096, "training.hard_negatives": 8},
}

FINETUNE = {"training.modal_gate": False, "training.unfreeze_blocks": 1, "training.epochs": 8}
FINETUNE_VARIANTS: dict[str, dict[str, Any]] = {
    "top block fine-tuned": FINETUNE,
    "+ masked-patch contrastive": {**FINETUNE, "training.visual_task": "masked-contrastive"},
    "+ masked-patch regression": {**FINETUNE, "training.visual_task": "masked-regression"},
}
"""End-to-end variants (section ``finetune``): in-batch InfoNCE with EfficientNet's top block trained,
then with each visual pre-training loss added. An epoch costs about a minute on 2 cores here, so these
runs stop at 8 epochs, and the new-products protocol runs the first variant only."""


NGRAMS: dict[str, Any] = {"training.ngram_buckets": 2 ** 18}
"""The n-gram embedding on the text towers (word 1-2-grams and character 3-grams in 2^18 hash buckets)."""


def build_store(folder: Path, splits, overrides: dict[str, Any] | None = None):
    from vitrine.catalog import Store, ingest
    from vitrine.config import Config

    store = Store.create(folder, Config.load(overrides={"encoders.cache_texts": True, **(overrides or {})}))
    if len(store.catalog) == 0:
        ingest(store, splits.products, progress=False)
    return store


def zero_shot(store, queries, **kwargs) -> dict[str, float]:
    import vitrine
    from vitrine.evaluation import evaluate

    store.config({"embedding.kind": "zeroshot"}).save(store.config_path)
    engine = vitrine.open(store)
    engine.sync(progress=False)
    return evaluate(engine, queries, progress=False, **kwargs).metrics


def zero_shot_row(store, splits) -> dict[str, float]:
    """Zero-shot figures on the val split and, under the new-products protocol, on its held-out products."""
    row = zero_shot(store, splits.val)
    held = [q for q in splits.val if set(q.relevant) & splits.held_out]
    if held:
        row.update({f"new-products {k}": v for k, v in zero_shot(store, held).items()})
    return row


def train_and_evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """One training run in its own process: train, re-index, evaluate. Returns figures."""
    from vitrine.catalog import Store
    from vitrine.catalog.datasets import load_splits
    from vitrine.training import train_store

    splits = load_splits(job["data"], protocol=job.get("protocol", "seen"))
    # A job may train on other pairs (a governed set's pairs.jsonl) and still be judged on the dataset's val split.
    train_pairs = load_splits(job["train"]).train if job.get("train") else splits.train
    store = Store.open(job["store"])
    config = store.config({"embedding.kind": "zeroshot", **job["overrides"]})
    start = time.perf_counter()
    result = train_store(store, train_pairs, config=config, name=job["name"], held_out=splits.held_out,
                         resume=job.get("resume", False), progress=False)
    figures: dict[str, Any] = {"train_s": time.perf_counter() - start, "epochs": result.epochs,
                               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    engine = None
    for weight in job.get("zero_shot_weights", [0.0]):  # > 0: the towers served beside zero-shot vectors
        engine, served = served_with(store, weight)
        figures.update(evaluate_runs(engine, splits, job, served))
    store.config({"embedding.zero_shot_weight": 0.0}).save(store.config_path)
    if job.get("judged_ndcg"):
        figures.update(judged_ndcg(engine, splits.val))
    return figures


def evaluate_together(job: dict[str, Any]) -> dict[str, Any]:
    """Trained models already in the store served side by side (``embedding.also``), evaluated as
    ``train_and_evaluate`` evaluates one; the store is left serving ``job["name"]`` alone."""
    from vitrine.catalog import Store
    from vitrine.catalog.datasets import load_splits

    splits = load_splits(job["data"], protocol=job.get("protocol", "seen"))
    store = Store.open(job["store"])
    together = {"embedding.kind": "trained", "embedding.model": job["name"], "embedding.also": ",".join(job["also"])}
    figures: dict[str, Any] = {}
    try:
        for weight in job.get("zero_shot_weights", [0.0]):
            engine, tag = served_with(store, weight, together)
            figures.update(evaluate_runs(engine, splits, job, tag))
    finally:
        store.config({"embedding.also": "", "embedding.zero_shot_weight": 0.0}).save(store.config_path)
    return figures


def served_with(store, weight: float, settings: dict[str, Any] | None = None):
    """An engine over ``store`` re-indexed with zero-shot weight ``weight`` (and ``settings``), and the tag its
    figures carry (``~zsW`` when the towers are served beside zero-shot vectors)."""
    import vitrine

    store.config({**(settings or {}), "embedding.zero_shot_weight": weight}).save(store.config_path)
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    return engine, f"~zs{weight:g}" if weight else ""


def in_process(job: dict[str, Any], work: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    # Not a Pool: its daemonic workers may not start the DataLoader's own worker processes.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(work or train_and_evaluate, job).result()


def evaluate_runs(engine, splits, job: dict[str, Any], tag: str = "") -> dict[str, Any]:
    """Val figures of every (channel, lexical, juiced query) run the job asks for, keyed ``metric+suffix``.
    ``job["lexical"]`` lists False (vector only), True (fused with BM25 as the store's ``search.fusion`` says)
    or a fusion name (``"convex"``: rows suffixed ``+lexical-convex``)."""
    from vitrine.evaluation import evaluate

    figures: dict[str, Any] = {}
    default_fusion = engine.config.search.fusion
    runs = [(channel, lexical, juice) for channel in job.get("channels", ["vector"])  # "prototype": ID recognition
            for lexical in (job.get("lexical", [False]) if channel == "vector" else [False])
            for juice in job.get("juice_query", [False])]  # juiced: salient crop of query photos (issue 6)
    for channel, lexical, juice_query in runs:
        fusion = lexical if isinstance(lexical, str) else default_fusion
        suffix = (("+lexical" if lexical else "") + (f"-{fusion}" if isinstance(lexical, str) else "")
                  + (f"@{channel}" if channel != "vector" else "") + ("+juiced query" if juice_query else "") + tag)
        engine.config.search.juice_query = juice_query
        engine.config.search.fusion = fusion
        lexical = bool(lexical)
        report = evaluate(engine, splits.val, progress=False, lexical=lexical, channel=channel)
        figures.update({f"{name}{suffix}": value for name, value in report.metrics.items()})
        if job.get("per_query"):  # one metric query by query, for paired comparisons
            figures[f"per-query {job['per_query']}{suffix}"] = [q.metrics[job["per_query"]] for q in report.per_query]
        if splits.held_out:
            held = [q for q in splits.val if set(q.relevant) & splits.held_out]
            new_metrics = evaluate(engine, held, progress=False, lexical=lexical, channel=channel).metrics
            figures.update({f"new-products {name}{suffix}": value for name, value in new_metrics.items()})
    engine.config.search.fusion = default_fusion
    return figures


def judged_ndcg(engine, queries) -> dict[str, float]:
    """NDCG@10 when ranking only each query's judged products: vector, BM25, and their RRF."""
    from vitrine.embedding import Query
    from vitrine.evaluation.metrics import ndcg_at_k
    from vitrine.index import reciprocal_rank_fusion

    catalog = engine.catalog
    totals = {"judged ndcg@10 vector": [], "judged ndcg@10 bm25": [], "judged ndcg@10 vector+bm25": []}
    vectors = engine.embedder.encode_queries([Query(text=q.text) for q in queries])
    everything = len(engine.lexical)
    _, lexical_keys = engine.lexical.search([q.text for q in queries], everything)
    for query, vector, bm25_row in zip(queries, vectors, lexical_keys):
        keys = {catalog.key_of(pid): pid for pid in query.relevant}
        scores = {key: float(engine.index.reconstruct(key) @ vector) for key in keys}
        vector_rank = sorted(keys, key=lambda key: -scores[key])
        bm25_rank = [int(key) for key in bm25_row if int(key) in keys]
        bm25_rank += [key for key in vector_rank if key not in set(bm25_rank)]  # unmatched go last
        fused = [key for key, _ in reciprocal_rank_fusion([vector_rank, bm25_rank])]
        for name, ranking in (("vector", vector_rank), ("bm25", bm25_rank), ("vector+bm25", fused)):
            totals[f"judged ndcg@10 {name}"].append(ndcg_at_k([keys[k] for k in ranking], query.relevant, 10))
    return {name: float(np.mean(values)) for name, values in totals.items()}


def bm25_only(engine, queries, per_query: str | None = None) -> dict[str, Any]:
    """Rank by BM25 alone through the engine's lexical index (with ``per_query``, that metric query by query too)."""
    from vitrine.evaluation.metrics import mean_metrics, query_metrics

    catalog = engine.catalog
    _, keys = engine.lexical.search([q.text for q in queries], 110)
    rows = []
    for query, row in zip(queries, keys):
        products = catalog.by_keys([int(k) for k in row if k >= 0])
        ranked = [products[int(k)].id for k in row if k >= 0 and int(k) in products]
        rows.append(query_metrics([pid for pid in ranked if pid not in query.exclude][:100], query.relevant))
    figures: dict[str, Any] = mean_metrics(rows)
    if per_query:
        figures[f"per-query {per_query}"] = [row[per_query] for row in rows]
    return figures


def grocery(data: Path, work: Path, results: dict) -> None:
    from vitrine.catalog.datasets import load_splits

    spec = f"grocery:{data / 'grocery-store'}"
    for protocol in ("seen", "new"):
        splits = load_splits(spec, protocol=protocol)
        store = build_store(work / "grocery", splits)
        rows = {"zero-shot": zero_shot_row(store, splits)}
        for variant, overrides in GROCERY_VARIANTS.items():
            print(f"grocery {protocol}: training {variant} ...", flush=True)
            rows[variant] = in_process({"data": spec, "protocol": protocol, "store": str(store.root),
                                        "name": f"{protocol}-{variant.strip('+ ').replace(' ', '-')}",
                                        "overrides": overrides})
        results[f"grocery-{protocol}"] = rows
        print_table(f"Grocery val, photo -> product, {protocol} products ({len(splits.val)} queries)", rows,
                    ["recall@1", "recall@5", "new-products recall@1", "new-products recall@5", "train_s", "peak_rss_mb"])


def finetune(data: Path, work: Path, results: dict) -> None:
    from vitrine.catalog.datasets import load_splits

    spec = f"grocery:{data / 'grocery-store'}"
    for protocol, variants in (("seen", list(FINETUNE_VARIANTS)), ("new", list(FINETUNE_VARIANTS)[:1])):
        splits = load_splits(spec, protocol=protocol)
        store = build_store(work / "grocery", splits)
        rows = {}
        for variant in variants:
            print(f"grocery {protocol}: training {variant} ...", flush=True)
            rows[variant] = in_process({"data": spec, "protocol": protocol, "store": str(store.root),
                                        "name": f"{protocol}-ft-{variant.strip('+ ').replace(' ', '-')}",
                                        "overrides": FINETUNE_VARIANTS[variant]})
        results[f"grocery-{protocol}-finetune"] = rows
        print_table(f"Grocery val, photo -> product, {protocol} products, backbone top fine-tuned "
                    f"({len(splits.val)} queries)", rows,
                    ["recall@1", "recall@5", "new-products recall@1", "new-products recall@5", "epochs", "train_s",
                     "peak_rss_mb"])


def crowdflower(data: Path, work: Path, results: dict) -> None:
    import vitrine
    from vitrine.catalog.datasets import load_splits

    spec = f"crowdflower:{data / 'crowdflower-search-relevance'}"
    splits = load_splits(spec)
    store = build_store(work / "crowdflower", splits)
    zero = zero_shot(store, splits.val)
    engine = vitrine.open(store)
    rows = {"BM25": bm25_only(engine, splits.val), "zero-shot MiniLM": zero}
    rows["zero-shot MiniLM"].update(judged_ndcg(engine, splits.val))
    no_keywords = {"training.keyword_pairs": False, "training.keyword_mask": 2.0}
    variants = {"trained, no keywords": no_keywords,
                "trained + keyword enhancement": {"training.keyword_pairs": True, "training.keyword_mask": 0.6},
                "trained, no keywords, + n-grams": {**no_keywords, **NGRAMS}}
    for name, overrides in variants.items():
        print(f"crowdflower: training {name} ...", flush=True)
        rows[name] = in_process({"data": spec, "store": str(store.root), "overrides": overrides,
                                 "name": name.replace(" ", "-").replace(",", "").replace("+", "plus"),
                                 "lexical": [False, True, "convex"], "judged_ndcg": True, "per_query": "ndcg@10"})
    results["crowdflower"] = rows
    print_table(f"CrowdFlower val ({len(splits.val)} queries, {len(splits.products)} products)", rows,
                ["judged ndcg@10 vector", "judged ndcg@10 bm25", "judged ndcg@10 vector+bm25", "ndcg@10", "recall@10",
                 "ndcg@10+lexical", "recall@10+lexical", "ndcg@10+lexical-convex", "recall@10+lexical-convex",
                 "train_s", "peak_rss_mb"])
    print_fusion_pairs(rows, "ndcg@10")


def print_fusion_pairs(rows: dict[str, dict[str, Any]], metric: str) -> None:
    """Convex fusion against RRF, query by query (paired bootstrap), for every row that has both."""
    from vitrine.rerank.metrics import paired_difference

    for name, row in rows.items():
        convex, rrf = row.get(f"per-query {metric}+lexical-convex"), row.get(f"per-query {metric}+lexical")
        if convex is not None and rrf is not None:
            print(f"  {name}: {metric} convex - rrf %+.4f [%+.4f, %+.4f]"
                  % paired_difference(np.array(convex), np.array(rrf)))


SHOPEE_VARIANTS = [("trained", "shopee", {}), ("trained + n-grams", "shopee-ngrams", NGRAMS),
                   # Mining costs several minutes an epoch on 2 cores (all 22,879 listings re-embedded every 50
                   # steps, 8 extra products per query through the towers): capped at 5 epochs.
                   ("trained + n-grams + hard negatives (5 epochs)", "shopee-ngrams-hard",
                    {**NGRAMS, "training.hard_negatives": 8, "training.epochs": 5}),
                   # BM25's strength is rare tokens: the same, with n-grams weighted by their catalog IDF.
                   ("trained + IDF n-grams + hard negatives (5 epochs)", "shopee-ngrams-idf-hard",
                    {**NGRAMS, "training.ngram_idf": True, "training.hard_negatives": 8, "training.epochs": 5}),
                   # MiniLM's last transformer layer trains with the towers (token states cached): an epoch
                   # costs about 8 minutes on 2 cores, so capped at 5 epochs; no mined negatives.
                   ("trained + n-grams + top text layer fine-tuned (5 epochs)", "shopee-ngrams-text1",
                    {**NGRAMS, "training.unfreeze_text_layers": 1, "training.epochs": 5})]


def shopee(data: Path, work: Path, results: dict, variants: set[str] = frozenset(), resume: bool = False) -> None:
    import vitrine
    from vitrine.catalog.datasets import load_splits

    spec = f"shopee:{data / 'shopee-titles'}"
    splits = load_splits(spec)
    store = build_store(work / "shopee", splits)
    rows = {"zero-shot MiniLM": zero_shot(store, splits.val)}
    rows["BM25"] = bm25_only(vitrine.open(store), splits.val)
    for name, model, overrides in SHOPEE_VARIANTS:
        if variants and name not in variants:
            continue
        print(f"shopee: {name} ...", flush=True)
        rows[name] = in_process({"data": spec, "store": str(store.root), "name": model,
                                 "overrides": overrides, "lexical": [False, True], "resume": resume})
    results["shopee"] = rows
    print_table(f"Shopee val, title -> other listings of its group ({len(splits.val)} queries, "
                f"{len(splits.products)} listings indexed)", rows,
                ["map@10", "recall@10", "map@10+lexical", "recall@10+lexical", "train_s", "peak_rss_mb"])


def print_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> None:
    columns = [c for c in columns if any(c in row for row in rows.values())]
    print(f"\n{title}")
    print("| method | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, row in rows.items():
        cells = [f"{row[c]:.4f}" if c in row and c not in ("train_s", "peak_rss_mb", "epochs") else
                 (f"{row[c]:.0f}" if c in row else "") for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    from vitrine.config import data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder with the datasets (default: $VITRINE_DATA)")
    parser.add_argument("--work", type=Path, default=Path(".vitrine/bench"), help="stores and feature caches")
    parser.add_argument("--only", default="grocery,finetune,crowdflower,shopee", help="comma-separated sections to run")
    parser.add_argument("--shopee-variants", default="",
                        help="Shopee: only these trained rows, separated by ';' (default: every row of SHOPEE_VARIANTS)")
    parser.add_argument("--resume", action="store_true",
                        help="Shopee: continue each trained row from its checkpoint (an interrupted run)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    data = args.data or data_dir()
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for section in args.only.split(","):
        variants = {name.strip() for name in args.shopee_variants.split(";") if name.strip()}
        sections = {"grocery": grocery, "finetune": finetune, "crowdflower": crowdflower,
                    "shopee": lambda *common: shopee(*common, variants=variants, resume=args.resume)}
        sections[section.strip()](data, args.work, results)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
