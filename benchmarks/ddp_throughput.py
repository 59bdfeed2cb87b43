"""Distributed training throughput (issue 4, item 6): ``--nproc 1`` vs ``--nproc 2`` on one machine.

    python benchmarks/ddp_throughput.py [--threads 2] [--epochs 2] [--repeats 2] [--products 81] [--photos 16]

A synthetic training set shaped like Grocery's cached features (81 products with a 384-d title and a
1280-d image feature, ``--photos`` noisy photo features per product), trained with the default tower
configuration (global batch 128). Settings: one process with ``--threads`` torch threads; one process
with one thread (what each DDP rank gets, to tell the gain of splitting the work from the cost of
intra-op threads on a busy machine); two DDP processes (gloo) with ``--threads / 2`` each. The runs
alternate so a busy neighbour slows all alike; the ratios are the figures, absolute times are noisy.

"Training s" is the time inside ``fit()`` (steps, checkpoints); "wall s" adds starting the processes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from vitrine.config import TrainingConfig
from vitrine.training import ContrastiveTrainer, TrainingSet
from vitrine.training.distributed import train_distributed
from vitrine.training.trainer import tower_config

TEXT_DIM, IMAGE_DIM = 384, 1280


def synthetic_features(products: int, photos: int, seed: int = 0) -> TrainingSet:
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    text, image = unit(rng.normal(size=(products, TEXT_DIM))), unit(rng.normal(size=(products, IMAGE_DIM)))
    positive = np.repeat(np.arange(products), photos)
    query_image = unit(image[positive] + 0.05 * rng.normal(size=(len(positive), IMAGE_DIM)))
    return TrainingSet(
        product_ids=[f"p{i}" for i in range(products)], product_text=text, product_image=image,
        product_has_image=np.ones(products, dtype=bool), equivalent=sp.identity(products, dtype=bool, format="csr"),
        query_text=np.zeros((len(positive), TEXT_DIM), dtype=np.float32), query_image=query_image,
        query_has_text=np.zeros(len(positive), dtype=bool), query_has_image=np.ones(len(positive), dtype=bool),
        positive=positive, weight=np.ones(len(positive), dtype=np.float32),
        relevant=[np.zeros(0, dtype=np.int64)] * len(positive), query_keys=[""] * len(positive))


def run_once(data: TrainingSet, config: TrainingConfig, nproc: int, threads: int, folder: Path) -> dict:
    """One training run; ``threads`` are the torch threads in all (DDP ranks split them)."""
    towers = tower_config(config, "synthetic", "efficientnet-lite0", TEXT_DIM, IMAGE_DIM)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    if nproc == 1:
        result = ContrastiveTrainer(data, config, towers, folder, progress=False).fit()
    else:
        result = train_distributed(data, config, towers, folder, nproc, progress=False, save=False).result
    wall = time.perf_counter() - start
    # Each DDP rank trains on 1/nproc of every global batch: examples per second count the whole batch.
    examples = result.steps * config.batch_size
    return {"seconds": result.seconds, "wall": wall, "steps": result.steps, "examples_per_s": examples / result.seconds,
            "first_loss": result.losses[0], "last_loss": result.losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all (split between DDP ranks)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each setting")
    parser.add_argument("--products", type=int, default=81)
    parser.add_argument("--photos", type=int, default=16, help="photo examples per product")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    args = parser.parse_args()

    data = synthetic_features(args.products, args.photos)
    config = replace(TrainingConfig(), epochs=args.epochs, batch_size=args.batch_size, dev_fraction=0.0)
    per_rank = max(1, args.threads // 2)
    settings = {f"--nproc 1 ({args.threads} threads)": (1, args.threads),
                "--nproc 1 (1 thread)": (1, 1),
                f"--nproc 2 ({per_rank} thread{'s' if per_rank > 1 else ''} each, gloo)": (2, args.threads)}
    runs: dict[str, list[dict]] = {label: [] for label in settings}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for index, (label, (nproc, threads)) in enumerate(settings.items()):
                run = run_once(data, config, nproc, threads, Path(work) / f"{index}-{repeat}")
                runs[label].append(run)
                print(f"  run {repeat + 1}, {label}: {run['steps']} steps in {run['seconds']:.1f} s "
                      f"(wall {run['wall']:.1f} s), loss {run['first_loss']:.3f} -> {run['last_loss']:.3f}",
                      file=sys.stderr, flush=True)

    median = {label: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for label, rs in runs.items()}
    base, single = median[next(iter(settings))], median["--nproc 1 (1 thread)"]
    print(f"\n{len(data)} examples, {args.products} products, global batch {args.batch_size}, {args.epochs} epochs, "
          f"{args.threads} threads in all, median of {args.repeats} alternating runs\n")
    print(f"| setting | steps | training s | wall s | examples/s | vs {next(iter(settings))} | vs 1 thread "
          "| loss first → last epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for label, m in median.items():
        print(f"| {label} | {m['steps']:.0f} | {m['seconds']:.1f} | {m['wall']:.1f} | {m['examples_per_s']:.0f} | "
              f"{m['examples_per_s'] / base['examples_per_s']:.2f}x | {m['examples_per_s'] / single['examples_per_s']:.2f}x "
              f"| {m['first_loss']:.3f} → {m['last_loss']:.3f} |")


if __name__ == "__main__":
    main()
