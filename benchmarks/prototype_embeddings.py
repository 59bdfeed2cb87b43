"""Prototype-ID embedding benchmark (issue 4): Grocery and Shopee, stage by stage, and the head at scale.

    python benchmarks/prototype_embeddings.py [--data ../shared/data] [--work .vitrine/bench] \\
        [--only grocery,shopee,head-scale] [--stage3-epochs 4] [--stage3-unfreeze 1] [--image-encoder NAME] \\
        [--also-image-encoders NAME[:native],...] [--stage1-recipe top-block] [--stage3-recipe classifier] \\
        [--protocols seen,new] [--seed N] [--image-views N] [--lr-schedule cosine] [--juiced] \\
        [--patience N] \\
        [--shopee-epochs 10] [--ngrams BUCKETS] [--shopee-text LAYERS] [--shopee-stage1-epochs N] \\
        [--shopee-stage3-text LAYERS [--shopee-stage3-only]] [--zero-shot-weight W] [--resume] [--json out.json]

Grocery (both protocols of issue 3) and Shopee train one model per protocol through
``vitrine.training.train_store`` with ``training.objective = prototype``, a stage at a time: stages
``1`` (the contrastive warm-up: the "contrastive" row), then ``1,2`` and ``1,2,3`` with ``resume`` so
finished stages are reused, not retrained. After each, the store is re-indexed and val is searched
through the engine with the towers (head dropped) and with ID recognition (``channel="prototype"``).
Each training runs in a fresh process (its wall time and peak memory are its own). Data preparation,
stores and feature caches are those of ``benchmarks/trained_embeddings.py``.

With ``--zero-shot-weight W`` (default 0.5), every stage is measured again served beside the frozen
backbones' zero-shot vectors (``embedding.zero_shot_weight = W``: scores (1 - W) * towers + W * zero-shot),
rows marked "zero-shot ensemble".

With ``--also-image-encoders A,B``, Grocery trains stages 1-3 again on each of those image backbones (same
prototype library and settings) and measures each model alone, then all of them served together with the main
model (``embedding.also``: the mean of their scores; ID recognition sums the prototype heads' cosines).
A name ending in ``:native`` trains that backbone without an image projection (``training.image_projection =
none``: the fine-tuned backbone's pooled features are the space) and with the ``classifier`` stage-3 recipe.

``--stage3-recipe classifier`` trains stage 3 as a plain classifier is fine-tuned: batches of 32, learning rate
1e-3 (the unfrozen blocks 1e-4), a cosine schedule, no dev split (the schedule picks no epoch); models get a
``-classifier`` suffix. These are the settings of ``backbone_classifier_probe.py`` (common fine-tuning values,
not searched on val).

``--stage1-recipe top-block`` trains stage 1 as issue 3 trained its best model for never-trained products (the
image backbone's top block fine-tuned, no modal gate, 8 epochs); stage 2 keeps that block frozen and stage 3 trains on
it. Models get a ``-s1top-block`` suffix.

``head-scale`` is synthetic: U = 10^6 prototypes of D = 256 (float16 matrix), a batch of 128, one
training step of the margin loss with full softmax vs the nearest 10% vs a random 10% of prototypes,
each variant in a fresh process for its own peak RSS.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.config import STAGE3_RECIPES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trained_embeddings import (bm25_only, build_store, evaluate_together, in_process, print_table, zero_shot,  # noqa: E402
                                zero_shot_row)

NATIVE = {"training.image_projection": "none", **STAGE3_RECIPES["classifier"]}
"""``NAME:native`` models: no image projection, stage 3 trained as a classifier (``vitrine.config.STAGE3_RECIPES``)."""

STAGES = {"contrastive (stage 1)": "1", "+ prototype head (stage 2)": "1,2", "+ end-to-end (stage 3)": "1,2,3"}

STAGE1_RECIPES: dict[str, dict[str, Any]] = {
    "frozen": {},
    "top-block": {"training.unfreeze_blocks": 1, "training.modal_gate": False, "prototype.stage1_epochs": 8,
                  "prototype.stage3_unfreeze": 1},
}
"""Grocery's stage 1. ``frozen``: the contrastive warm-up on frozen backbone features. ``top-block``: issue 3's
new-products recipe (its ``finetune`` section: EfficientNet's top block fine-tuned, no modal gate, 8 epochs), whose
fine-tuned block stage 2 keeps frozen and stage 3 trains on (so stage 3 fine-tunes that one block)."""


def staged_rows(spec: str, protocol: str, store, name: str, stages: dict[str, str], overrides: dict[str, Any],
                lexical: list[bool], resume: bool = False, zero_shot_weight: float = 0.0,
                per_query: str | None = None, train: Path | None = None) -> dict[str, dict[str, Any]]:
    """A row per stage (towers) and per stage with a head (ID recognition); with ``zero_shot_weight``,
    each again with the towers served beside the backbones' zero-shot vectors. ``train``: a pairs JSONL to train
    on instead of the dataset's training split (val stays the dataset's)."""
    rows: dict[str, dict[str, float]] = {}
    weights = [0.0, zero_shot_weight] if zero_shot_weight else [0.0]
    for label, stage_list in stages.items():
        print(f"{name}: training {label} ...", flush=True)
        with_head = stage_list != "1"
        figures = in_process({"data": spec, "protocol": protocol, "store": str(store.root), "name": name,
                              "overrides": {"training.objective": "prototype", "prototype.stages": stage_list,
                                            **overrides},
                              "resume": resume or stage_list != "1", "lexical": lexical,
                              "channels": ["vector", "prototype"] if with_head else ["vector"],
                              "zero_shot_weights": weights, "per_query": per_query,
                              **({"train": str(train)} if train else {})})
        rows.update(split_rows(figures, weights, label, f"ID recognition after stage {stage_list[-1]}" if with_head
                               else None))
    return rows


def split_rows(figures: dict[str, Any], weights: list[float], towers: str, ids: str | None) -> dict[str, dict]:
    """One run's figures as table rows: the towers (``towers``) and ID recognition (``ids``, if the run had a
    head), each once per zero-shot weight."""
    rows = {}
    for weight in weights:
        tag, note = (f"~zs{weight:g}", f", zero-shot ensemble w={weight:g}") if weight else ("", "")
        mine = {k.removesuffix(tag): v for k, v in figures.items() if (k.endswith(tag) if weight else "~zs" not in k)}
        rows[towers + note] = {k: v for k, v in mine.items() if "@prototype" not in k}
        if ids:
            rows[ids + note] = {k.replace("@prototype", ""): v for k, v in mine.items() if "@prototype" in k}
    return rows


def other_backbones(spec: str, protocol: str, store, name: str, overrides: dict[str, Any], args: argparse.Namespace,
                    weights: list[float]) -> dict[str, dict[str, Any]]:
    """``--also-image-encoders``: stages 1-3 again on each of those backbones (same prototypes, same settings), each
    model measured alone, then all served together with ``name`` (``embedding.also``: scores averaged; ID
    recognition sums the heads' cosines)."""
    rows: dict[str, dict[str, Any]] = {}
    others = []
    for entry in [e.strip() for e in args.also_image_encoders.split(",") if e.strip()]:
        encoder, _, variant = entry.partition(":")
        other = f"{name}-{encoder.removeprefix('efficientnet-').replace('@', '-')}" + (f"-{variant}" if variant else "")
        print(f"{other}: training stages 1-3 on {entry} ...", flush=True)
        figures = in_process({"data": spec, "protocol": protocol, "store": str(store.root), "name": other,
                              "overrides": {"training.objective": "prototype", "prototype.stages": "1,2,3",
                                            "encoders.image": encoder, **overrides,
                                            **(NATIVE if variant == "native" else {})},
                              "resume": args.resume, "lexical": [False], "channels": ["vector", "prototype"],
                              "zero_shot_weights": weights})
        rows.update(split_rows(figures, weights, f"{entry}: stage 3", f"{entry}: ID recognition after stage 3"))
        others.append(other)
    if others:
        print(f"{name}: served together with {', '.join(others)} ...", flush=True)
        figures = in_process({"data": spec, "protocol": protocol, "store": str(store.root), "name": name,
                              "also": others, "channels": ["vector", "prototype"], "zero_shot_weights": weights},
                             evaluate_together)
        rows.update(split_rows(figures, weights, f"stage 3, {len(others) + 1} backbones together",
                               f"ID recognition after stage 3, {len(others) + 1} backbones together"))
    return rows


def grocery(data: Path, work: Path, results: dict, args: argparse.Namespace) -> None:
    from vitrine.catalog.datasets import load_splits

    spec = f"grocery:{data / 'grocery-store'}"
    overrides = {"prototype.stage3_epochs": args.stage3_epochs, "prototype.stage3_unfreeze": args.stage3_unfreeze,
                 "training.image_views": args.image_views, "training.lr_schedule": args.lr_schedule,
                 "training.seed": args.seed,
                 **({"training.patience": args.patience} if args.patience else {}),
                 **STAGE3_RECIPES[args.stage3_recipe], **STAGE1_RECIPES[args.stage1_recipe]}
    for protocol in args.protocols.split(","):
        splits = load_splits(spec, protocol=protocol)
        store = build_store(work / "grocery", splits,
                            {"encoders.image": args.image_encoder} if args.image_encoder else None)
        train = None
        if args.juiced:
            store, train = juiced_store(store, splits, spec, protocol, work)
        rows = {"zero-shot": zero_shot_row(store, splits)}
        name = (f"{protocol}-prototype" + (f"-top{args.stage3_unfreeze}" if args.stage3_unfreeze != 1 else "")
                + (f"-s1{args.stage1_recipe}" if args.stage1_recipe != "frozen" else "")
                + (f"-views{args.image_views}" if args.image_views else "")
                + (f"-{args.lr_schedule}" if args.lr_schedule != "constant" else "")
                + (f"-{args.stage3_recipe}" if args.stage3_recipe != "towers" else "")
                + (f"-seed{args.seed}" if args.seed else ""))
        rows.update(staged_rows(spec, protocol, store, name, STAGES, overrides, [False], args.resume,
                                args.zero_shot_weight, train=train))
        weights = [0.0, args.zero_shot_weight] if args.zero_shot_weight else [0.0]
        rows.update(other_backbones(spec, protocol, store, name, overrides, args, weights))
        results[f"grocery-{protocol}"] = rows
        print_table(f"Grocery val, photo -> product, {protocol} products ({len(splits.val)} queries)", rows,
                    ["recall@1", "recall@5", "new-products recall@1", "new-products recall@5", "epochs", "train_s",
                     "peak_rss_mb"])


def juiced_store(store, splits, spec: str, protocol: str, work: Path):
    """Issue 6's juiced training set (every photo and its salient crop; cleaned, enhanced product texts), judged
    by contrastive towers trained on the raw pairs as ``benchmarks/governance.py`` does, and a store of its own
    whose catalog is the juiced one. A finished set is reused. Returns (store, pairs JSONL)."""
    from governance import BUDGET, govern_with, governed_store, write_pairs

    from vitrine.governance.records import read_manifest

    pairs = [p for p in splits.train if p.product_id not in splits.held_out]
    judge, set_name = f"{protocol}-judge", f"{protocol}-juice"
    if not (store.models_dir / judge / "model.safetensors").is_file():
        print(f"{judge}: training the judging towers on {len(pairs)} raw pairs ...", flush=True)
        raw = write_pairs(pairs, work / f"grocery-{protocol}-raw-pairs.jsonl")
        in_process({"data": spec, "protocol": protocol, "store": str(store.root), "name": judge, "train": str(raw),
                    "overrides": {**BUDGET, "training.epochs": 10}})
    finished = sorted((store.root / "governed" / set_name).glob("v*/manifest.json"))
    if finished:
        folder = finished[-1].parent
        print(f"{set_name}: reusing {folder} {read_manifest(folder)['counts']}", flush=True)
    else:
        folder = govern_with(store, pairs, "juice", judge, set_name, spec)[0].folder
    juiced = governed_store(work / f"grocery-{protocol}-juiced", folder / "products.jsonl",
                            store.root / "cache" / "features.sqlite")
    return juiced, folder / "pairs.jsonl"


def shopee(data: Path, work: Path, results: dict, args: argparse.Namespace) -> None:
    import vitrine
    from vitrine.catalog.datasets import load_splits

    spec = f"shopee:{data / 'shopee-titles'}"
    splits = load_splits(spec)
    store = build_store(work / "shopee", splits)
    rows = {"zero-shot MiniLM": zero_shot(store, splits.val),
            "BM25": bm25_only(vitrine.open(store), splits.val, per_query="map@10")}
    # No images: stage 3 has only the text model's top layers to unfreeze (--shopee-stage3-text).
    text_stages = {k: v for k, v in STAGES.items() if v != "1,2,3" or args.shopee_stage3_text}
    if args.shopee_stage3_only:  # stages 1-2 finished and measured in an earlier run: reuse, do not re-measure
        text_stages = {k: v for k, v in text_stages.items() if v == "1,2,3"}
    overrides = {"training.epochs": args.shopee_epochs, "training.ngram_buckets": args.ngrams,
                 "training.unfreeze_text_layers": args.shopee_text,
                 "prototype.stage1_epochs": args.shopee_stage1_epochs,
                 "prototype.stage3_unfreeze": 0, "prototype.stage3_unfreeze_text": args.shopee_stage3_text,
                 "prototype.stage3_epochs": args.stage3_epochs}
    name = ("shopee-prototype" + (f"-ngrams{args.ngrams}" if args.ngrams else "")
            + (f"-text{args.shopee_text}" if args.shopee_text else ""))
    rows.update(staged_rows(spec, "seen", store, name, text_stages, overrides, [False, True, "convex"], args.resume,
                            args.zero_shot_weight, per_query="map@10"))
    results["shopee"] = rows
    print_table(f"Shopee val, title -> other listings of its group ({len(splits.val)} queries, "
                f"{len(splits.products)} listings indexed)", rows,
                ["map@10", "recall@10", "map@10+lexical", "recall@10+lexical", "map@10+lexical-convex",
                 "recall@10+lexical-convex", "epochs", "train_s", "peak_rss_mb"])
    print_paired_map(rows, args.zero_shot_weight)


def print_paired_map(rows: dict[str, dict[str, Any]], zero_shot_weight: float) -> None:
    """The issue's Shopee claims query by query: prototype-ID towers vs contrastive ones, and vs BM25 (alone and
    fused with BM25): mean paired difference of mAP@10 with a 95% bootstrap interval (BCa, queries resampled)."""
    from vitrine.rerank.metrics import paired_difference

    bm25 = rows["BM25"]["per-query map@10"]
    print("\nShopee val, mAP@10 differences query by query, mean [95% bootstrap interval]")
    for note in [""] + ([f", zero-shot ensemble w={zero_shot_weight:g}"] if zero_shot_weight else []):
        prototype, contrastive = rows.get(f"+ prototype head (stage 2){note}"), rows.get(f"contrastive (stage 1){note}")
        if prototype is None or contrastive is None:
            continue
        pairs = [("prototype - contrastive", prototype["per-query map@10"], contrastive["per-query map@10"]),
                 ("prototype+lexical - contrastive+lexical", prototype["per-query map@10+lexical"],
                  contrastive["per-query map@10+lexical"]),
                 ("prototype - BM25", prototype["per-query map@10"], bm25),
                 ("prototype+lexical - BM25", prototype["per-query map@10+lexical"], bm25)]
        if "per-query map@10+lexical-convex" in prototype:  # score fusion instead of RRF
            pairs += [("prototype+lexical (convex) - BM25", prototype["per-query map@10+lexical-convex"], bm25),
                      ("prototype+lexical (convex) - contrastive+lexical (convex)",
                       prototype["per-query map@10+lexical-convex"], contrastive["per-query map@10+lexical-convex"]),
                      ("prototype+lexical (convex) - prototype+lexical (rrf)",
                       prototype["per-query map@10+lexical-convex"], prototype["per-query map@10+lexical"])]
        for label, a, b in pairs:
            print(f"  {label}{note}: %+.4f [%+.4f, %+.4f]" % paired_difference(np.array(a), np.array(b)))


def head_step(job: dict[str, Any]) -> dict[str, float]:
    """One variant of the head-scale benchmark, in its own process: seconds per step and peak RSS."""
    import torch

    from vitrine.embedding.prototypes import PrototypeHead
    from vitrine.training.losses import ArcFace
    from vitrine.training.prototype_negatives import PrototypeNeighbours, sample_columns

    torch.set_num_threads(job["threads"])
    count, dim, batch = job["prototypes"], job["dim"], job["batch"]
    rng = np.random.default_rng(0)
    head = PrototypeHead.random(count, dim, dtype="float16")
    tower = torch.nn.Linear(dim, dim)  # stands in for the towers: the loss must reach trainable weights
    optimizer = torch.optim.AdamW(tower.parameters(), lr=1e-3)
    loss_fn = ArcFace(0.2, 0.05)
    neighbours = PrototypeNeighbours(every=job["refresh"]) if job["strategy"] == "nearest" else None
    refresh_s = 0.0
    times = []
    for step in range(job["warmup"] + job["steps"]):
        targets = rng.integers(0, count, size=batch)
        features = torch.from_numpy(head.weight[torch.from_numpy(targets)].float().numpy()) + 0.3 * torch.randn(batch, dim)
        start = time.perf_counter()
        if neighbours is not None and neighbours.due(step):
            neighbours.refresh(head.unit_rows(), step)
            refresh_s = time.perf_counter() - start
            start = time.perf_counter()
        columns = sample_columns(targets, count, job["strategy"], job["ratio"], rng, neighbours)
        column_tensor = None if columns is None else torch.from_numpy(columns)
        rows = head.rows(column_tensor)
        vectors = torch.nn.functional.normalize(tower(features), dim=-1)
        positions = targets if columns is None else np.searchsorted(columns, targets)
        loss = loss_fn(vectors @ torch.nn.functional.normalize(rows, dim=-1).T, torch.from_numpy(positions))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        head.update(column_tensor, rows.grad, 0.5)
        del rows, vectors, loss
        if step >= job["warmup"]:
            times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times), "refresh_s": refresh_s,
            "columns": float(count if job["strategy"] == "all" else int(np.ceil(job["ratio"] * count))),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def head_scale(data: Path, work: Path, results: dict, args: argparse.Namespace) -> None:
    base = {"prototypes": args.prototypes, "dim": 256, "batch": 128, "ratio": 0.1, "steps": args.head_steps,
            "warmup": 1, "refresh": 100, "threads": args.threads}
    rows = {}
    for label, strategy in (("full softmax", "all"), ("nearest 10%", "nearest"), ("random 10% (Partial FC)", "random")):
        print(f"head-scale: {label} ...", flush=True)
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows[label] = pool.submit(head_step, {**base, "strategy": strategy}).result()
    full = rows["full softmax"]["step_s"]
    for row in rows.values():
        row["step vs full"] = row["step_s"] / full
    results["head-scale"] = rows
    print(f"\nHead scale: U = {args.prototypes:,} prototypes, D = 256 (float16 matrix), batch 128, "
          f"{args.threads} threads, median of {args.head_steps} steps")
    print("| negatives | columns per step | step_s | step vs full | neighbour refresh_s | peak_rss_mb |")
    print("|---|---|---|---|---|---|")
    for label, row in rows.items():
        refresh = f"{row['refresh_s']:.1f}" if row["refresh_s"] else ""
        print(f"| {label} | {row['columns']:,.0f} | {row['step_s']:.3f} | {row['step vs full']:.2f} | {refresh} | "
              f"{row['peak_rss_mb']:.0f} |", flush=True)


def main() -> None:
    from vitrine.config import data_dir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder with the datasets (default: $VITRINE_DATA)")
    parser.add_argument("--work", type=Path, default=Path(".vitrine/bench"), help="stores and feature caches")
    parser.add_argument("--only", default="grocery,shopee,head-scale", help="comma-separated sections to run")
    parser.add_argument("--stage3-epochs", type=int, default=4, help="cap on stage 3 epochs (the slow one on a CPU)")
    parser.add_argument("--stage3-unfreeze", type=int, default=1, help="image backbone blocks stage 3 fine-tunes")
    parser.add_argument("--image-encoder", default=None,
                        help="Grocery: image backbone of a new store (encoders.image, e.g. efficientnet-lite2@288; "
                             "default: the config's). An existing store under --work keeps its own")
    parser.add_argument("--also-image-encoders", default="",
                        help="Grocery: train stages 1-3 again on these backbones too (comma-separated, e.g. "
                             "efficientnet-lite2@288,efficientnet-lite0@288:native) and measure them alone and served "
                             "together with the main model (embedding.also); ':native' trains one without an image "
                             "projection, with the classifier stage-3 recipe")
    parser.add_argument("--stage1-recipe", choices=list(STAGE1_RECIPES), default="frozen",
                        help="Grocery: stage 1 on frozen features, or issue 3's new-products recipe (top-block: the "
                             "top block fine-tuned in stage 1, kept by stage 2, trained on by stage 3; no modal gate; "
                             "8 epochs; models get a -s1top-block suffix)")
    parser.add_argument("--stage3-recipe", choices=list(STAGE3_RECIPES), default="towers",
                        help="Grocery: stage 3 with the training settings of stages 1-2 (towers), or as a classifier "
                             "is fine-tuned (batches of 32, lr 1e-3, cosine schedule, no dev split; models get a "
                             "-classifier suffix)")
    parser.add_argument("--image-views", type=int, default=0,
                        help="Grocery: train on this many extra cropped views of every photo (training.image_views; "
                             "models get a -viewsN suffix)")
    parser.add_argument("--protocols", default="seen,new", help="Grocery: which protocols to run (seen, new)")
    parser.add_argument("--lr-schedule", default="constant",
                        help="Grocery: training.lr_schedule of every stage (constant or cosine; models get a "
                             "-cosine suffix)")
    parser.add_argument("--seed", type=int, default=0,
                        help="Grocery: training.seed of every stage (dev split, initialisation, batch order; models "
                             "get a -seedN suffix)")
    parser.add_argument("--juiced", action="store_true",
                        help="Grocery: train on issue 6's juiced set (photos plus salient crops, governed texts) and "
                             "serve its governed catalog, in stores of their own under --work")
    parser.add_argument("--patience", type=int, default=0,
                        help="Grocery: early-stopping patience of every stage (training.patience; 0 = the config's). "
                             "Grocery's dev MRR is near 0.99 from the first epoch, so a patience above the caps "
                             "makes every stage run to its cap")
    parser.add_argument("--shopee-epochs", type=int, default=10, help="cap on Shopee's stage 1 and 2 epochs")
    parser.add_argument("--shopee-text", type=int, default=0,
                        help="Shopee: stage 1 fine-tunes the text model's top N layers too (stage 2 keeps them "
                             "frozen as stage 1 left them; stage 3 trains them on)")
    parser.add_argument("--shopee-stage1-epochs", type=int, default=0,
                        help="Shopee: cap on stage 1's epochs alone (0 = --shopee-epochs)")
    parser.add_argument("--shopee-stage3-text", type=int, default=0,
                        help="Shopee: add stage 3, fine-tuning the text model's top N layers (0 = stages 1-2 only)")
    parser.add_argument("--shopee-stage3-only", action="store_true",
                        help="Shopee: measure only the stage-3 row (stages 1-2 must be finished in --work; reused)")
    parser.add_argument("--ngrams", type=int, default=0,
                        help="Shopee: train with the hashed n-gram embedding in this many buckets (0 = without)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stage-1 runs from their checkpoints too (later stages always resume)")
    parser.add_argument("--zero-shot-weight", type=float, default=0.5,
                        help="also measure every stage served beside the backbones' zero-shot vectors with this "
                             "weight (embedding.zero_shot_weight; 0 = skip those rows)")
    parser.add_argument("--prototypes", type=int, default=1_000_000, help="U for the head-scale section")
    parser.add_argument("--head-steps", type=int, default=5, help="timed steps per head-scale variant")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the head-scale section")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    if args.juiced and (args.image_encoder or args.also_image_encoders):
        parser.error("--juiced builds its stores with the default image encoder; drop --image-encoder and "
                     "--also-image-encoders")
    data = args.data or data_dir()
    results: dict[str, Any] = {}
    start = time.perf_counter()
    sections = {"grocery": grocery, "shopee": shopee, "head-scale": head_scale}
    for section in args.only.split(","):
        sections[section.strip()](data, args.work, results, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
