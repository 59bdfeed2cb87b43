"""DataJuicer benchmark (issue 6): the same trainer, same budget, on raw vs sieved vs juiced data.

    python benchmarks/governance.py [--data ../shared/data] [--work .vitrine/bench-govern] \
        [--only grocery-seen,crowdflower,speed,grocery-new] [--epochs 10] [--crops add|replace|better] \
        [--finetune [--finetune-blocks 1] [--finetune-epochs 8] [--finetune-sets raw,juiced]] [--json out.json]

For each dataset: train on the raw pairs (that model also judges the data), sieve the pairs with it
(drop the lowest 20%), juice them with it (salient crops, tags, cleaned and enhanced product texts: the
juiced catalog goes into a store of its own), then train the same towers with the same settings on
each and evaluate on the dataset's untouched val split. Grocery photo queries are evaluated as they
come and with query-side juicing (salient crop before encoding). ``speed`` measures governance
throughput (vision branch, local vs Ray, on the same photos) and query-side juicing's latency cost,
side by side in one run.

Training runs reuse ``trained_embeddings.train_and_evaluate`` (each in its own process). Backbone
features of the source photos are copied from ``.vitrine/bench`` when that cache exists.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from trained_embeddings import FINETUNE, build_store, in_process, print_table

BUDGET = {"training.modal_gate": False}
"""Same trainer for every variant: in-batch InfoNCE (the best Grocery row of the trained-embeddings
benchmark) on frozen, cached backbone features; epochs capped by ``--epochs``."""
CROWDFLOWER_BUDGET = {**BUDGET, "training.keyword_pairs": False, "training.keyword_mask": 2.0}
"""CrowdFlower's best trained row (keyword enhancement hurt there)."""


def copy_cache(source: Path, store_root: Path) -> None:
    """Seed a store's feature cache from another (SQLite backup: consistent even with a WAL beside it)."""
    target = store_root / "cache" / "features.sqlite"
    if target.exists() or not source.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def governed_store(folder: Path, products_jsonl: Path, cache_from: Path):
    """A store whose catalog is a governed set's products (same ids, governed texts)."""
    from vitrine.catalog import Store, ingest, load_products
    from vitrine.config import Config

    store = Store.create(folder, Config.load(overrides={"encoders.cache_texts": True}))
    copy_cache(cache_from, folder)
    if len(store.catalog) == 0:
        ingest(store, load_products(products_jsonl, "jsonl"), progress=False)
    return store


def write_pairs(pairs, path: Path) -> Path:
    """Pairs as the JSONL that ``vitrine train --data`` reads (absolute image paths)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [{k: v for k, v in {"product_id": p.product_id, "query_text": p.query_text, "query_image": p.query_image,
                                  "grade": p.grade}.items() if v is not None} for p in pairs]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def govern_with(store, pairs, mode: str, model: str, name: str, source: str, engine: str = "local",
                crops: str = "add"):
    from vitrine.governance import govern
    from vitrine.governance.report import write_report

    config = store.config({"governance.model": model, "batch.engine": engine, "governance.crops": crops})
    start = time.perf_counter()
    governed = govern(store, pairs, mode=mode, name=name, source=source, config=config, progress=False)
    seconds = time.perf_counter() - start
    report = write_report(governed, store.reports_dir, config.governance.report_samples)
    print(f"  {mode}: {governed.manifest['counts']} alignment {governed.manifest.get('alignment')} "
          f"in {seconds:.0f} s; report {report}", flush=True)
    return governed, seconds


def run_dataset(label: str, spec: str, protocol: str, work: Path, epochs: int, budget: dict[str, Any],
                cache_from: Path, results: dict, columns: list[str], juice_engine: str = "local", limit: int = 0,
                crops: str = "add", finetune: dict[str, Any] | None = None, finetune_sets: tuple[str, ...] = (),
                **evaluation: Any) -> None:
    from vitrine.catalog.datasets import load_splits
    from vitrine.governance.pipeline import sample_pairs

    splits = load_splits(spec, protocol=protocol)
    store = build_store(work / label.split("-")[0], splits)
    copy_cache(cache_from, store.root)
    overrides = {**budget, "training.epochs": epochs}
    job = {"data": spec, "protocol": protocol, "overrides": overrides, **evaluation}
    rows: dict[str, dict[str, Any]] = {}

    def done(name: str) -> None:
        print(f"  {label} {name}: " + json.dumps({k: round(v, 4) for k, v in rows[name].items()}), flush=True)
    train_pairs = sample_pairs([p for p in splits.train if p.product_id not in splits.held_out], limit, seed=0)
    raw_pairs = write_pairs(train_pairs, work / f"{label}-raw-pairs.jsonl")
    print(f"{label}: training on raw data ({len(train_pairs)} pairs) ...", flush=True)
    raw_name = f"{label}-raw"
    rows["raw"] = in_process({**job, "store": str(store.root), "name": raw_name, "train": str(raw_pairs)})
    done("raw")
    sieved, sieve_s = govern_with(store, train_pairs, "sieve", raw_name, f"{label}-sieve", spec)
    print(f"{label}: training on sieved data ...", flush=True)
    rows["sieved"] = in_process({**job, "store": str(store.root), "name": f"{label}-sieve",
                                 "train": str(sieved.pairs_path)})
    rows["sieved"]["govern_s"] = sieve_s
    done("sieved")
    juiced, juice_s = govern_with(store, train_pairs, "juice", raw_name, f"{label}-juice", spec, engine=juice_engine,
                                  crops=crops)
    juiced_store = governed_store(work / f"{label}-juiced", juiced.products_path, store.root / "cache" / "features.sqlite")
    print(f"{label}: training on juiced data ...", flush=True)
    rows["juiced"] = in_process({**job, "store": str(juiced_store.root), "name": f"{label}-juice",
                                 "train": str(juiced.pairs_path)})
    rows["juiced"]["govern_s"] = juice_s
    done("juiced")
    if finetune:  # the same two sets with the image backbone's top blocks trained too (slower: minutes each)
        blocks = finetune["training.unfreeze_blocks"]
        what = "top block" if blocks == 1 else f"top {blocks} blocks"
        sets = (("raw", store.root, raw_pairs), ("juiced", juiced_store.root, juiced.pairs_path))
        for name, root, pairs in [entry for entry in sets if entry[0] in finetune_sets]:
            print(f"{label}: fine-tuning the {what} on {name} data ...", flush=True)
            rows[f"{name}, {what} fine-tuned"] = in_process(
                {**job, "overrides": {**budget, **finetune}, "store": str(root),
                 "name": f"{label}-{name}-finetuned" + (f"-top{blocks}" if blocks != 1 else ""), "train": str(pairs)})
            done(f"{name}, {what} fine-tuned")
    for name, governed in (("sieved", sieved), ("juiced", juiced)):
        rows[name].update({f"alignment {k}": v for k, v in governed.manifest["alignment"].items()})
    results[label] = rows
    policy = f" (crops: {crops})" if juiced.manifest["counts"]["photos"] else ""
    print_table(f"{label}: raw vs sieved vs juiced{policy}, same trainer ({epochs} epochs max), val split "
                f"({len(splits.val)} queries)", rows, columns + ["alignment before", "alignment after",
                                                               "epochs", "train_s", "govern_s"])


def grocery(protocol: str, data: Path, work: Path, epochs: int, results: dict, cache_from: Path,
            juice_engine: str = "local", limit: int = 0, crops: str = "add",
            finetune: dict[str, Any] | None = None, finetune_sets: tuple[str, ...] = ("raw", "juiced")) -> None:
    columns = ["recall@1", "recall@1+juiced query", "recall@5", "recall@5+juiced query"]
    if protocol == "new":
        columns += ["new-products recall@1", "new-products recall@1+juiced query"]
    run_dataset(f"grocery-{protocol}", f"grocery:{data / 'grocery-store'}", protocol, work, epochs, BUDGET,
                cache_from / "grocery/cache/features.sqlite", results, columns, juice_engine=juice_engine,
                limit=limit, crops=crops, finetune=finetune, finetune_sets=finetune_sets, juice_query=[False, True])


def crowdflower(data: Path, work: Path, epochs: int, results: dict, cache_from: Path) -> None:
    run_dataset("crowdflower", f"crowdflower:{data / 'crowdflower-search-relevance'}", "seen", work, epochs,
                CROWDFLOWER_BUDGET, cache_from / "crowdflower/cache/features.sqlite", results,
                ["ndcg@10", "recall@10", "ndcg@10+lexical", "recall@10+lexical"], lexical=[False, True])


def speed(data: Path, work: Path, samples: int, results: dict) -> None:
    """Vision-branch throughput, local vs Ray on the same photos; query juicing's latency, interleaved."""
    import vitrine
    from vitrine.catalog import Store
    from vitrine.catalog.datasets import load_splits
    from vitrine.config import BatchConfig, GovernanceConfig
    from vitrine.governance.pipeline import sample_pairs
    from vitrine.governance.vision import vision_factory
    from vitrine.parallel import map_batches

    splits = load_splits(f"grocery:{data / 'grocery-store'}")
    photos = [p.query_image for p in sample_pairs(splits.train, samples, seed=0)]
    store = Store.open(work / "grocery")
    model = str(store.models_dir / "grocery-seen-raw")
    settings = GovernanceConfig()
    figures: dict[str, float] = {}
    for name, engine in (("local", BatchConfig(engine="local")), ("ray", BatchConfig(engine="ray", num_cpus=2))):
        if name == "ray":  # start Ray (and its workers' imports) outside the timed part
            map_batches(photos[:2], vision_factory(settings, model, None), batch_size=1, engine=engine)
        start = time.perf_counter()
        map_batches(photos, vision_factory(settings, model, None), batch_size=settings.batch_size, engine=engine)
        figures[f"{name} samples/s"] = len(photos) / (time.perf_counter() - start)
    figures["ray / local"] = figures["ray samples/s"] / figures["local samples/s"]
    print(f"\ngovernance throughput, vision branch (saliency, box, ImageNet classes), {len(photos)} Grocery photos")
    print("| engine | samples/s |\n|---|---|")
    for name in ("local", "ray"):
        print(f"| {name} | {figures[f'{name} samples/s']:.2f} |")
    print(f"ray / local = {figures['ray / local']:.2f}", flush=True)

    engine = vitrine.open(store)
    # Photos as uploaded bytes, as a shopper sends them: a path would hit the feature cache on the plain side.
    queries = [Path(q.image).read_bytes() for q in splits.val[::8]][:30]
    engine.search(image=queries[0], juice_query=True)  # load both networks before timing
    times: dict[bool, list[float]] = {False: [], True: []}
    for photo in queries:
        for juice in (False, True):
            start = time.perf_counter()
            engine.search(image=photo, juice_query=juice, k=10)
            times[juice].append((time.perf_counter() - start) * 1000)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    figures.update({"photo search p50 ms": off, "photo search + juiced query p50 ms": on, "juice latency ratio": on / off})
    print(f"\nquery-side juicing, photo search latency ({len(queries)} val photos, interleaved, k = 10)")
    print("| query | p50 ms | p90 ms |\n|---|---|---|")
    for juice, label in ((False, "photo as taken"), (True, "salient crop first")):
        values = sorted(times[juice])
        print(f"| {label} | {statistics.median(values):.1f} | {values[int(0.9 * (len(values) - 1))]:.1f} |")
    print(f"juiced / plain p50 = {on / off:.2f}", flush=True)
    results["speed"] = figures


def main() -> None:
    from vitrine.config import GovernanceConfig, data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder with the datasets (default: $VITRINE_DATA)")
    parser.add_argument("--work", type=Path, default=Path(".vitrine/bench-govern"), help="stores and caches")
    parser.add_argument("--only", default="grocery-seen,crowdflower,speed,grocery-new", help="sections, in order")
    parser.add_argument("--epochs", type=int, default=10, help="training budget (max epochs) of every variant")
    parser.add_argument("--samples", type=int, default=200, help="photos for the throughput measurement")
    parser.add_argument("--cache-from", type=Path, default=Path(".vitrine/bench"),
                        help="trained-embeddings benchmark work folder whose feature caches seed the stores")
    parser.add_argument("--limit", type=int, default=0,
                        help="Grocery: train every variant on this many training photos drawn with seed 0 (0 = all)")
    parser.add_argument("--crops", default=GovernanceConfig().crops,
                        help="governance.crops for Grocery's juiced set: add (the default), replace or better")
    parser.add_argument("--finetune", action="store_true",
                        help="Grocery: also train raw and juiced data with the image backbone's top block unfrozen "
                             "(trained_embeddings.FINETUNE: 8 epochs, minutes each)")
    parser.add_argument("--finetune-blocks", type=int, default=FINETUNE["training.unfreeze_blocks"],
                        help="with --finetune: how many of EfficientNet's top blocks train")
    parser.add_argument("--finetune-epochs", type=int, default=FINETUNE["training.epochs"],
                        help="with --finetune: the fine-tuned runs' epoch budget")
    parser.add_argument("--finetune-sets", default="raw,juiced", help="with --finetune: which training sets")
    parser.add_argument("--juice-engine", default="local", help="where Grocery's vision branch runs: local or ray")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    data = args.data or data_dir()
    finetune = ({**FINETUNE, "training.unfreeze_blocks": args.finetune_blocks, "training.epochs": args.finetune_epochs}
                if args.finetune else None)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    sections = {"grocery-seen": lambda: grocery("seen", data, args.work, args.epochs, results, args.cache_from,
                                                args.juice_engine, args.limit, args.crops, finetune,
                                                tuple(args.finetune_sets.split(","))),
                "grocery-new": lambda: grocery("new", data, args.work, args.epochs, results, args.cache_from,
                                               args.juice_engine, args.limit, args.crops, finetune,
                                                tuple(args.finetune_sets.split(","))),
                "crowdflower": lambda: crowdflower(data, args.work, args.epochs, results, args.cache_from),
                "speed": lambda: speed(data, args.work, args.samples, results)}
    for section in args.only.split(","):
        sections[section.strip()]()
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
