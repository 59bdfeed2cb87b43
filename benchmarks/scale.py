"""Scale benchmark: 10^6 vectors of 256-d that look like real embeddings, through FAISS and milvus-lite.

    python benchmarks/scale.py --source-store .vitrine/bench/shopee [--n 1000000] [--queries 1000]
                               [--milvus-n 100000] [--threads 2] [--json out.json]

Vectors: the trained Shopee towers (``models/<model>`` of ``--source-store``, 256-d) embed every
catalog title; a Gaussian mixture (diagonal covariances) fitted to those embeddings is sampled
``--n`` times and L2-normalised, and queries are fresh samples of the same mixture. Uniform random
vectors would be the worst case for graph indexes and say nothing about real catalogs. The vectors
are cached under ``.vitrine/scale/`` (never committed).

Measured in one run, per index: build time, memory (resident-set growth while building), QPS one
query at a time (1 thread) and in batches (``--threads``), recall@10 against exact search. Then, on
the same HNSW index, vitrine's ``FaissIndex.search`` against raw ``faiss`` (interleaved, same queries)
and a 1%-selective filter checked against brute force. milvus-lite runs on a ``--milvus-n`` subset
(its inserts go through a local gRPC server and are far slower than FAISS).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from vitrine.config import Config, IndexConfig
from vitrine.index import FaissIndex

CACHE = Path(".vitrine/scale")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


# --- vectors that look like real embeddings ---------------------------------------------------------

def source_embeddings(store: Path, model: str) -> np.ndarray:
    """The trained towers' product vectors of every catalog item of ``store`` (cached)."""
    path = CACHE / f"source-{store.name}-{model}.npy"
    if path.is_file():
        return np.load(path)
    import shutil

    from vitrine.catalog import Store
    from vitrine.encoders import FeatureCache
    from vitrine.engine.factory import build_embedder

    source = Store.open(store)
    cache_copy = CACHE / f"features-{store.name}.sqlite"  # read a copy: never write into another store
    if not cache_copy.is_file() and (store / "cache" / "features.sqlite").is_file():
        shutil.copy(store / "cache" / "features.sqlite", cache_copy)
    config = source.config({"embedding.kind": "trained", "embedding.model": model, "encoders.cache_texts": True})
    embedder = build_embedder(config, source.models_dir, None, FeatureCache(cache_copy))
    products = list(source.catalog)
    vectors = embedder.encode_products(products, progress=True)
    np.save(path, vectors)
    return vectors


def mixture_vectors(source: np.ndarray, n: int, queries: int, components: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Samples of a Gaussian mixture fitted to ``source``: k-means (FAISS) places the components, each
    gets its members' share as weight and their per-dimension variance (diagonal covariance). A hard-
    assignment fit: EM (scikit-learn) over 22,879 x 256 took too long on a shared 2-core machine."""
    path = CACHE / f"mixture-{n}x{source.shape[1]}-c{components}-s{seed}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return saved["base"], saved["queries"]
    started = time.perf_counter()
    kmeans = faiss.Kmeans(source.shape[1], components, niter=25, seed=seed, spherical=True)
    kmeans.train(source)
    _, labels = kmeans.index.search(source, 1)
    labels = labels[:, 0]
    counts = np.bincount(labels, minlength=components)
    means = np.stack([source[labels == c].mean(axis=0) if counts[c] else kmeans.centroids[c] for c in range(components)])
    spread = np.stack([source[labels == c].std(axis=0) if counts[c] > 1 else source.std(axis=0) * 0.5
                       for c in range(components)])
    print(f"fitted a {components}-component mixture to {len(source)} embeddings in {time.perf_counter() - started:.0f} s")
    rng = np.random.default_rng(seed)
    weights = counts / counts.sum()

    def sample(count: int) -> np.ndarray:
        chosen = rng.choice(components, size=count, p=weights)
        out = np.empty((count, source.shape[1]), dtype=np.float32)
        for start in range(0, count, 100_000):
            c = chosen[start:start + 100_000]
            noise = rng.standard_normal((len(c), source.shape[1]), dtype=np.float32)
            out[start:start + len(c)] = means[c] + spread[c] * noise
        return unit(out)

    base, asked = sample(n), sample(queries)
    np.savez(path, base=base, queries=asked)
    return base, asked


# --- measuring -------------------------------------------------------------------------------------

def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def single_qps(search, queries: np.ndarray) -> tuple[float, np.ndarray]:
    faiss.omp_set_num_threads(1)
    found = []
    started = time.perf_counter()
    for query in queries:
        found.append(search(query[None, :])[1][0])
    seconds = time.perf_counter() - started
    return len(queries) / seconds, np.stack(found)


def batch_qps(search, queries: np.ndarray, threads: int) -> float:
    faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    search(queries)
    return len(queries) / (time.perf_counter() - started)


def measure_faiss(name: str, factory: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                  threads: int, settings: list[tuple[str, dict]], single_n: int) -> tuple[list[dict], FaissIndex]:
    faiss.omp_set_num_threads(threads)
    config = IndexConfig(factory=factory, hnsw_m=32, ef_construction=80)
    before = rss_mb()
    started = time.perf_counter()
    index = FaissIndex(base.shape[1], config)
    index.add(np.arange(len(base), dtype=np.int64), base)
    build = time.perf_counter() - started
    memory = rss_mb() - before
    rows = []
    for label, knobs in settings:
        raw = index._index
        if "efSearch" in knobs:
            raw.hnsw.efSearch = knobs["efSearch"]
            index.config.ef_search = knobs["efSearch"]
        if "nprobe" in knobs:
            raw.nprobe = knobs["nprobe"]
        qps1, found = single_qps(lambda q: index.search(q, 10), queries[:single_n])
        qpsb = batch_qps(lambda q: index.search(q, 10), queries, threads)
        rows.append({"index": name, "setting": label, "build_s": build, "memory_mb": memory,
                     "bytes_per_vector": memory * 2**20 / len(base), "qps_single": qps1, "qps_batch": qpsb,
                     "recall@10": recall_at(found, truth[:single_n])})
        print(f"  {name} {label}: recall@10 {rows[-1]['recall@10']:.3f}, {qps1:.0f} QPS single, {qpsb:.0f} batched")
    return rows, index


def wrapper_vs_raw(index: FaissIndex, queries: np.ndarray, threads: int, rounds: int = 3) -> dict:
    """Single-query and batched timings of the wrapper and of raw FAISS on the very same index, the
    two interleaved and taking turns going first (whoever goes second finds the query in cache)."""
    faiss.omp_set_num_threads(1)
    raw = index._index
    spent = {"raw": 0.0, "wrapper": 0.0}
    calls = {"raw": lambda q: raw.search(q, 10), "wrapper": lambda q: index.search(q, 10)}

    def timed(name: str, q: np.ndarray) -> None:
        started = time.perf_counter()
        calls[name](q)
        spent[name] += time.perf_counter() - started

    for turn in range(rounds):
        for n, query in enumerate(queries):
            order = ("raw", "wrapper") if (n + turn) % 2 == 0 else ("wrapper", "raw")
            for name in order:
                timed(name, query[None, :])
    single = dict(spent)
    faiss.omp_set_num_threads(threads)
    spent.update(raw=0.0, wrapper=0.0)
    for turn in range(2 * rounds):
        for name in (("raw", "wrapper") if turn % 2 == 0 else ("wrapper", "raw")):
            timed(name, queries)
    return {"single_ratio": single["wrapper"] / single["raw"], "raw_us": single["raw"] / (rounds * len(queries)) * 1e6,
            "wrapper_us": single["wrapper"] / (rounds * len(queries)) * 1e6,
            "batch_ratio": spent["wrapper"] / spent["raw"]}


def filtered(index: FaissIndex, base: np.ndarray, queries: np.ndarray, share: float, k: int = 10) -> dict:
    """Every ``1/share``-th id is allowed; compare with brute force over the allowed vectors."""
    step = int(round(1 / share))
    allowed = np.arange(0, len(base), step, dtype=np.int64)
    started = time.perf_counter()
    scores, found = index.search(queries, k, allowed)
    seconds = time.perf_counter() - started
    _, rows = faiss.knn(queries, base[allowed], k, metric=faiss.METRIC_INNER_PRODUCT)
    truth = allowed[rows]
    full = float(np.mean((found >= 0).sum(axis=1) == k))
    inside = float(np.mean(np.isin(found, allowed)))
    return {"share": share, "allowed": len(allowed), "rows_with_k": full, "results_inside_filter": inside,
            "recall@10": recall_at(found, truth, k), "qps_batch": len(queries) / seconds}


def measure_milvus(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, single_n: int) -> dict:
    from vitrine.index import MilvusIndex

    with tempfile.TemporaryDirectory() as folder:
        config = IndexConfig(uri="bench.db", milvus_index="FLAT", milvus_batch=5000)
        before = rss_mb()
        started = time.perf_counter()
        index = MilvusIndex(base.shape[1], config, Path(folder))
        index.add(np.arange(len(base), dtype=np.int64), base)
        index.save(Path(folder))
        build = time.perf_counter() - started
        found = []
        started = time.perf_counter()
        for query in queries[:single_n]:
            found.append(index.search(query[None, :], 10)[1][0])
        qps1 = single_n / (time.perf_counter() - started)
        started = time.perf_counter()
        index.search(queries, 10)
        qpsb = len(queries) / (time.perf_counter() - started)
        on_disk = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20
        index.close()
        return {"index": f"milvus-lite FLAT ({len(base):,} vectors)", "setting": "exact", "build_s": build,
                "memory_mb": on_disk, "bytes_per_vector": on_disk * 2**20 / len(base), "qps_single": qps1,
                "qps_batch": qpsb, "recall@10": recall_at(np.stack(found), truth[:single_n]),
                "client_rss_mb": rss_mb() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-store", type=Path, default=Path(".vitrine/bench/shopee"),
                        help="store whose trained model embeds the catalog that the mixture is fitted to")
    parser.add_argument("--model", default="shopee", help="trained model under the source store's models/")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=1000, help="queries timed one at a time (Flat uses a fifth)")
    parser.add_argument("--components", type=int, default=256)
    parser.add_argument("--milvus-n", type=int, default=100_000, help="vectors in the milvus-lite run (0 = skip)")
    parser.add_argument("--hnsw-n", type=int, default=0, help="vectors in the HNSW run (0 = all): its build is the slow one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated: flat, hnsw, ivfpq, milvus")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))

    source = source_embeddings(args.source_store, args.model)
    base, queries = mixture_vectors(source, args.n, args.queries, args.components)
    print(f"{len(base):,} x {base.shape[1]} vectors from a mixture fitted to {len(source):,} trained embeddings")
    faiss.omp_set_num_threads(args.threads)
    truth_path = CACHE / f"truth-{len(base)}x{base.shape[1]}-q{len(queries)}.npy"
    if truth_path.is_file():
        truth = np.load(truth_path)
    else:
        started = time.perf_counter()
        truth = exact(queries, base, args.threads)
        np.save(truth_path, truth)
        print(f"exact ground truth in {time.perf_counter() - started:.0f} s")

    rows: list[dict] = []
    results: dict = {"n": len(base), "dim": base.shape[1], "threads": args.threads, "rows": rows,
                     "hnsw_n": min(args.hnsw_n or len(base), len(base)), "filtered": []}
    if "flat" not in skip:
        found, index = measure_faiss(f"Flat ({len(base):,})", "Flat", base, queries, truth, args.threads,
                                     [("exact", {})], max(args.single // 5, 50))
        rows.extend(found)
        results["filtered"] += [{"index": f"Flat ({len(base):,})", **filtered(index, base, queries, share)}
                                for share in (0.01, 0.1)]
        del index
    if "ivfpq" not in skip:
        found, index = measure_faiss(f"IVF-PQ ({len(base):,})", "IVF256,PQ64", base, queries, truth, args.threads,
                                     [("nprobe=16", {"nprobe": 16}), ("nprobe=64", {"nprobe": 64})], args.single)
        rows.extend(found)
        del index
    if "hnsw" not in skip:
        n = results["hnsw_n"]
        subset, sub_truth = (base, truth) if n == len(base) else (base[:n], exact(queries, base[:n], args.threads))
        found, index = measure_faiss(f"HNSW32 ({n:,})", "HNSW32", subset, queries, sub_truth, args.threads,
                                     [(f"efSearch={ef}", {"efSearch": ef}) for ef in (32, 64, 128)], args.single)
        rows.extend(found)
        index._index.hnsw.efSearch = index.config.ef_search = 64
        results["wrapper_vs_raw"] = wrapper_vs_raw(index, queries[:args.single], args.threads)
        results["filtered"] += [{"index": f"HNSW32 ({n:,})", **filtered(index, subset, queries, share)}
                                for share in (0.01, 0.1)]
        del index
    if "milvus" not in skip and args.milvus_n:
        subset = base[:args.milvus_n]
        rows.append(measure_milvus(subset, queries, exact(queries, subset, args.threads), min(args.single, 200)))
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def exact(queries: np.ndarray, base: np.ndarray, threads: int) -> np.ndarray:
    faiss.omp_set_num_threads(threads)
    return faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]


def report(results: dict) -> None:
    print(f"\n### {results['n']:,} x {results['dim']} vectors (HNSW on the first {results['hnsw_n']:,}), "
          f"{results['threads']} threads for batches, 1 thread for single queries\n")
    print("| index | setting | build s | memory MB | bytes/vector | QPS single | QPS batch | recall@10 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in results["rows"]:
        print(f"| {row['index']} | {row['setting']} | {row['build_s']:.1f} | {row['memory_mb']:.0f} | "
              f"{row['bytes_per_vector']:.0f} | {row['qps_single']:.0f} | {row['qps_batch']:.0f} | {row['recall@10']:.3f} |")
    if "wrapper_vs_raw" in results:
        w = results["wrapper_vs_raw"]
        print(f"\n| vitrine FaissIndex vs raw faiss (same HNSW32 index of {results['hnsw_n']:,}, efSearch=64) | value |\n|---|---:|")
        print(f"| single query: raw µs | {w['raw_us']:.1f} |\n| single query: wrapper µs | {w['wrapper_us']:.1f} |")
        print(f"| single query: wrapper / raw | {w['single_ratio']:.3f} |\n| batch: wrapper / raw | {w['batch_ratio']:.3f} |")
    if results.get("filtered"):
        print("\n| index | filter share | allowed ids | rows with exactly k | results inside filter | recall@10 vs brute force | QPS batch |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in results["filtered"]:
            print(f"| {row['index']} | {row['share']:.0%} | {row['allowed']:,} | {row['rows_with_k']:.3f} | "
                  f"{row['results_inside_filter']:.3f} | {row['recall@10']:.3f} | {row['qps_batch']:.0f} |")


if __name__ == "__main__":
    main()
