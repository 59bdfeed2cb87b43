"""Querybank normalisation (``vitrine querybank``): val searched plain and with a bank of other val queries.

    python benchmarks/querybank.py --store STORE --data grocery:PATH [--protocol seen|new] --model NAME \\
        [--also A,B] [--zero-shot-weight W] [--folds 2] [--k 10] [--bank val|train] [--lexical] [--json out.json]

Serves trained models already in STORE (``embedding.model`` / ``embedding.also``), searches the val split plainly,
then with the store's query bank fitted on other queries: with ``--bank val`` (the default) the val queries are
cut into ``--folds`` random folds and each fold is searched with a bank of the other folds' queries (unlabelled:
the stand-in for a shop's query log; no query is ever in its own bank); with ``--bank train`` the bank is the
training split's queries (what a shop has before it has a log). Prints R@1/R@5 (and never-trained products' under
``--protocol new``), the paired difference of R@1 per query with a 95% bootstrap interval, and a photo search's
latency both ways. The store's config and index are put back afterwards and the bank removed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trained_embeddings import print_table  # noqa: E402


def searched(engine, queries, lexical: bool) -> list[dict[str, float]]:
    from vitrine.evaluation import evaluate

    return [q.metrics for q in evaluate(engine, queries, progress=False, lexical=lexical).per_query]


def with_bank(engine, splits, args) -> list[dict[str, float]]:
    """Per-query metrics of val searched under a query bank (of the other folds, or of the training queries)."""
    from vitrine.embedding import Query

    if args.bank == "train":
        bank = [Query(text=p.query_text, image=p.query_image) for p in splits.train]
        engine.fit_querybank(bank, k=args.k, progress=True)
        return searched(engine, splits.val, args.lexical)
    fold_of = np.random.default_rng(args.seed).permutation(len(splits.val)) % args.folds
    metrics: list[dict[str, float]] = [{} for _ in splits.val]
    for fold in range(args.folds):
        inside = [i for i in range(len(splits.val)) if fold_of[i] == fold]
        bank = [Query(text=q.text, image=q.image) for i, q in enumerate(splits.val) if fold_of[i] != fold]
        engine.fit_querybank(bank, k=args.k)
        for i, row in zip(inside, searched(engine, [splits.val[i] for i in inside], args.lexical)):
            metrics[i] = row
    return metrics


def photo_latency(engine, queries, rounds: int = 2, count: int = 40) -> dict[str, list[float]]:
    """p50 of one photo search at a time (ms), plain and with the bank, alternated ``rounds`` times."""
    photos = [q.image for q in queries if q.image][:count + 5]
    timings: dict[str, list[float]] = {"plain": [], "query bank": []}
    for _ in range(rounds):
        for label, on in (("plain", False), ("query bank", True)):
            engine.config.search.querybank = on
            times = []
            for photo in photos:
                start = time.perf_counter()
                engine.search(image=photo, k=10)
                times.append((time.perf_counter() - start) * 1000)
            timings[label].append(statistics.median(times[5:]))
    engine.config.search.querybank = True
    return timings


def main() -> None:
    import vitrine
    from vitrine.catalog import Store
    from vitrine.catalog.datasets import load_splits
    from vitrine.engine.querybank import BANK_FILE
    from vitrine.rerank.metrics import paired_difference

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True, help="a store holding the trained models")
    parser.add_argument("--data", required=True, help="dataset spec, e.g. grocery:../shared/data/grocery-store")
    parser.add_argument("--protocol", default="seen", help="Grocery: seen or new")
    parser.add_argument("--model", required=True, help="embedding.model to serve")
    parser.add_argument("--also", default="", help="embedding.also: more models served beside it")
    parser.add_argument("--zero-shot-weight", type=float, default=0.0, help="embedding.zero_shot_weight")
    parser.add_argument("--bank", choices=["val", "train"], default="val",
                        help="bank of other val queries (a query log's stand-in) or of the training queries")
    parser.add_argument("--folds", type=int, default=2, help="--bank val: folds the val queries are cut into")
    parser.add_argument("--k", type=int, default=None, help="search.querybank_k (default: the config's, 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--lexical", action="store_true", help="fuse with BM25 (text catalogs)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()

    store = Store.open(args.store)
    before = store.config_path.read_text()
    splits = load_splits(args.data, protocol=args.protocol)
    start = time.perf_counter()
    try:
        store.config({"embedding.kind": "trained", "embedding.model": args.model, "embedding.also": args.also,
                      "embedding.zero_shot_weight": args.zero_shot_weight, "search.querybank": True}
                     ).save(store.config_path)
        engine = vitrine.open(store)
        engine.sync(rebuild=True, progress=False)
        engine.config.search.querybank = False
        plain = searched(engine, splits.val, args.lexical)
        engine.config.search.querybank = True
        banked = with_bank(engine, splits, args)
        latency = photo_latency(engine, splits.val) if any(q.image for q in splits.val) else {}
    finally:
        (store.index_dir / BANK_FILE).unlink(missing_ok=True)
        store.config_path.write_text(before)
        vitrine.open(store).sync(rebuild=True, progress=False)
    new = [i for i, q in enumerate(splits.val) if set(q.relevant) & splits.held_out]
    rows, pairs = {}, {}
    for label, metrics in (("plain", plain), (f"query bank ({args.bank}, k = {args.k or 'config'})", banked)):
        row = {name: float(np.mean([m[name] for m in metrics])) for name in ("recall@1", "recall@5", "map@10")}
        if new:
            row.update({f"new-products {name}": float(np.mean([metrics[i][name] for i in new]))
                        for name in ("recall@1", "recall@5")})
        rows[label] = row
    served = args.model + (f" + {args.also}" if args.also else "") + (
        f", zero-shot w={args.zero_shot_weight:g}" if args.zero_shot_weight else "")
    print_table(f"{args.data.split(':')[0]} val ({args.protocol}), {served}: {len(splits.val)} queries", rows,
                ["recall@1", "recall@5", "map@10", "new-products recall@1", "new-products recall@5"])
    for name in ("recall@1", "map@10"):
        pairs[name] = paired_difference(np.array([m[name] for m in banked]), np.array([m[name] for m in plain]))
        print(f"query bank - plain, {name}: %+.4f [%+.4f, %+.4f]" % pairs[name])
    if new:
        pairs["new-products recall@1"] = paired_difference(np.array([banked[i]["recall@1"] for i in new]),
                                                           np.array([plain[i]["recall@1"] for i in new]))
        print("query bank - plain, new-products recall@1: %+.4f [%+.4f, %+.4f]" % pairs["new-products recall@1"])
    for label, p50s in latency.items():
        print(f"photo search p50, {label}: " + ", ".join(f"{v:.1f} ms" for v in p50s))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "paired": pairs, "latency": latency, "args": vars(args)},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
