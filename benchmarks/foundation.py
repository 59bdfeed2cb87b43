"""Foundation benchmark: zero-shot photo -> product quality, encoding throughput, search latency.

    python benchmarks/foundation.py [--data ../shared/data] [--latency-queries 100] [--runtimes onnx,torch]
                                    [--json out.json]

Builds a fresh store from the Grocery Store Dataset in a temporary folder, then measures in one run:
photo -> product Recall@1/5 on the val split (gallery = the 81 iconic catalog products), images/s and
texts/s for encoding, and single-query search latency (encode + retrieve) for text and photo queries.
With several ``--runtimes`` (what runs the backbones: ONNX Runtime or eager PyTorch) everything is
measured once per runtime, one after the other in the same process, and the ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vitrine
from vitrine.catalog import Store, ingest, load_products, load_queries
from vitrine.config import Config, data_dir
from vitrine.evaluation import evaluate

TEXT_QUERIES = ["oat milk", "green apple", "red bell pepper", "organic yoghurt", "juice with orange",
                "something sweet for dessert", "lactose free milk", "vanilla soy yoghurt", "a ripe banana",
                "potatoes for mash", "mango", "fresh ginger", "sour cream", "cucumber", "lemon"]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def timed_loop(fn, items) -> list[float]:
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return times


def measure(root: Path, runtime: str, latency_queries: int) -> dict[str, float]:
    """Every figure for one backbone runtime, on a store of its own."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        store = Store.create(Path(folder) / "store", Config.load(None, {"encoders.runtime": runtime}))
        start = time.perf_counter()
        ingest(store, load_products(root), progress=False)
        figures["ingest_s"] = time.perf_counter() - start

        start = time.perf_counter()
        engine = vitrine.open(store)  # loads (and on first use exports) the backbones
        figures["open_engine_s"] = time.perf_counter() - start
        start = time.perf_counter()
        engine.sync(progress=False)
        figures["index_81_products_s"] = time.perf_counter() - start

        val = load_queries(root / "val.txt", root)
        report = evaluate(engine, val, name="grocery-val", progress=False)
        figures.update({f"val_{name}": value for name, value in report.metrics.items()})
        figures.update(encoding_speed(engine, [q.image for q in val]))
        figures.update(search_latency(engine, [q.image for q in val], latency_queries))
    return figures


def encoding_speed(engine, photos: list) -> dict[str, float]:
    embedder = engine.embedder
    # The store's feature cache would answer for files it has seen: time the backbone itself.
    image_encoder = getattr(embedder.image_encoder, "encoder", embedder.image_encoder)
    image_encoder.encode(photos[:8])  # warm-up
    start = time.perf_counter()
    image_encoder.encode(photos, batch_size=32)
    images_per_s = len(photos) / (time.perf_counter() - start)

    texts = [f"{t} {p.title}" for t in TEXT_QUERIES for p in list(engine.catalog)[:20]]
    embedder.text_encoder.encode(texts[:8])
    start = time.perf_counter()
    embedder.text_encoder.encode(texts, batch_size=32)
    return {"images_per_s": images_per_s, "texts_per_s": len(texts) / (time.perf_counter() - start)}


def search_latency(engine, photos: list, n: int) -> dict[str, float]:
    text_items = [TEXT_QUERIES[i % len(TEXT_QUERIES)] for i in range(n)]
    # Photo queries arrive as bytes (uploads): decoded and encoded every time, never cached.
    photo_items = [Path(photos[(i * 7) % len(photos)]).read_bytes() for i in range(n)]
    engine.search(text=text_items[0]), engine.search(image=photo_items[0])  # warm-up
    text_times = timed_loop(lambda q: engine.search(text=q, k=10), text_items)
    photo_times = timed_loop(lambda q: engine.search(image=q, k=10), photo_items)
    vectors = engine.embedder.encode_queries([vitrine.embedding.Query(image=p) for p in photo_items[:32]])
    retrieve_times = timed_loop(lambda v: engine.search_vectors(v[None, :], 10), vectors)
    figures = {}
    for kind, times in (("text", text_times), ("photo", photo_times), ("retrieve_only", retrieve_times)):
        figures[f"{kind}_search_p50_ms"] = 1000 * statistics.median(times)
        figures[f"{kind}_search_p99_ms"] = 1000 * percentile(times, 99)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder holding grocery-store/ (default: $VITRINE_DATA)")
    parser.add_argument("--latency-queries", type=int, default=100, help="single queries timed per kind")
    parser.add_argument("--runtimes", default="onnx,torch",
                        help="backbone runtimes to measure side by side (encoders.runtime); the first is the default")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    root = (args.data or data_dir()) / "grocery-store" / "dataset"
    runtimes = args.runtimes.split(",")
    results = {runtime: measure(root, runtime, args.latency_queries) for runtime in runtimes}

    names = list(results[runtimes[0]])
    width = max(map(len, names))
    print(f"vitrine foundation benchmark (Grocery val: 296 photos, 81 products; {platform.machine()}, "
          f"{torch.get_num_threads()} threads)")
    header = "".join(f"{runtime:>12}" for runtime in runtimes)
    ratios = [f"{other}/{runtimes[0]}" for other in runtimes[1:]]
    print(f"  {'figure':<{width}}{header}" + "".join(f"{ratio:>14}" for ratio in ratios))
    for name in names:
        values = [results[runtime][name] for runtime in runtimes]
        cells = "".join(f"{value:>12.4f}" for value in values)
        cells += "".join(f"{value / values[0]:>14.2f}" if values[0] else f"{'':>14}" for value in values[1:])
        print(f"  {name:<{width}}{cells}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
