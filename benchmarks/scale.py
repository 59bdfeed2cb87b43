"""Scale benchmark: 10^6 vectors of 256-d that look like real embeddings, through FAISS and milvus-lite.

    python benchmarks/scale.py --source-store .vitrine/bench/shopee [--n 1000000] [--queries 1000]
                               [--hnsw-n 0] [--milvus-n 100000] [--threads 2] [--concurrent 2]
                               [--only SECTIONS | --skip SECTIONS] [--json out.json]

Sections (``--only``/``--skip``, comma-separated, so a long run can be done in pieces): flat, ivfpq,
ivfpq-refine, hnsw, hnsw-sq8, hnsw-fp16, milvus. Each FAISS section builds one index through vitrine's
``FaissIndex`` (every core: ``--build-threads``, with a progress line per ``--chunk`` vectors added) and
then measures each of its search settings.

Vectors: the trained Shopee towers (``models/<model>`` of ``--source-store``, 256-d) embed every
catalog title; a Gaussian mixture (diagonal covariances) fitted to those embeddings is sampled
``--n`` times and L2-normalised, and queries are fresh samples of the same mixture. Uniform random
vectors would be the worst case for graph indexes and say nothing about real catalogs. The vectors
are cached under ``.vitrine/scale/`` (never committed).

Measured per index and setting: build time, memory (the index as FAISS writes it, and resident-set
growth while building), recall@10 against exact search, and three throughputs:

- *single, 1 caller*: one query per ``FaissIndex.search`` call, one calling thread (OpenMP 1 thread);
- *single, N callers*: the same, from ``--concurrent`` threads at once, each with its share of the
  queries (FAISS releases the GIL while it searches): what a server on N cores answering N one-query
  requests at a time gets. This is the figure the "1,000 single-query QPS on 2 cores" target means;
- *batch*: all queries in one call, ``--threads`` OpenMP threads.

The two single-query figures are medians of ``--repeats`` timings taken in turn (Flat: one timing).

HNSW sections run on the first ``--hnsw-n`` vectors (their own exact ground truth) and sweep efSearch;
IVF-PQ + refine sweeps nprobe and ``refine_k_factor`` (k_factor=1 re-orders PQ's own top 10: recall
as PQ codes alone). Then, on the HNSW32 index, vitrine's ``FaissIndex.search`` against raw ``faiss``
(interleaved, same queries), and on Flat and HNSW32 1%- and 10%-selective filters checked against
brute force. milvus-lite runs on a ``--milvus-n`` subset (its inserts go through a local gRPC server
and are far slower than FAISS). The printed tables end with the issue's HNSW target, checked per
HNSW variant against the concurrent single-query figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from vitrine.config import IndexConfig
from vitrine.index import FaissIndex

CACHE = Path(".vitrine/scale")
TRAIN_SAMPLE = 262_144
"""Vectors in the first add, which trains an IVF index: FAISS samples at most 256 per list (IVF1024)."""
K = 10


@dataclass(frozen=True)
class Section:
    """One FAISS index to build (a factory string, also its name in the tables) and the settings measured."""

    factory: str
    settings: list[tuple[str, dict]]
    on_hnsw_subset: bool = False


def ef_sweep() -> list[tuple[str, dict]]:
    return [(f"efSearch={ef}", {"ef_search": ef}) for ef in (24, 32, 48, 64, 128, 192, 256, 384)]


SECTIONS = {
    "flat": Section("Flat", [("exact", {})]),
    "ivfpq": Section("IVF256,PQ64", [(f"nprobe={p}", {"nprobe": p}) for p in (16, 64)]),
    "ivfpq-refine": Section("IVF1024,PQ64,Refine(SQfp16)",
                            [(f"nprobe={p}, k_factor={f}", {"nprobe": p, "refine_k_factor": f})
                             for p, f in ((16, 1), (16, 10), (32, 10), (32, 20), (64, 20))]),
    "hnsw": Section("HNSW32", ef_sweep(), on_hnsw_subset=True),
    "hnsw-sq8": Section("HNSW32,SQ8", ef_sweep(), on_hnsw_subset=True),
    "hnsw-fp16": Section("HNSW32,SQfp16", ef_sweep(), on_hnsw_subset=True),
}
ALL_SECTIONS = (*SECTIONS, "milvus")


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

def recall_at(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def single_qps(search: Search, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """One query per call from this thread alone; the ids found, for recall."""
    faiss.omp_set_num_threads(1)
    found = []
    started = time.perf_counter()
    for query in queries:
        found.append(search(query[None, :])[1][0])
    seconds = time.perf_counter() - started
    return len(queries) / seconds, np.stack(found)


def concurrent_qps(search: Search, queries: np.ndarray, callers: int) -> tuple[float, np.ndarray]:
    """One query per call from ``callers`` threads at once, each with its share of the queries and one
    OpenMP thread (a server answering that many one-query requests at a time)."""
    shares = np.array_split(np.arange(len(queries)), callers)
    found = np.full((len(queries), K), -1, dtype=np.int64)
    ready = threading.Barrier(callers + 1)

    def caller(rows: np.ndarray) -> None:
        faiss.omp_set_num_threads(1)  # OpenMP settings are per thread
        ready.wait()
        for row in rows.tolist():
            found[row] = search(queries[row][None, :])[1][0]

    threads = [threading.Thread(target=caller, args=(rows,)) for rows in shares]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return len(queries) / (time.perf_counter() - started), found


def batch_qps(search: Search, queries: np.ndarray, threads: int) -> float:
    faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    search(queries)
    return len(queries) / (time.perf_counter() - started)


def file_mb(index: FaissIndex) -> float:
    """Size of the index as FAISS writes it: vectors or codes, graph links, refine copy (not the key map)."""
    with tempfile.TemporaryDirectory(dir=CACHE) as folder:
        path = Path(folder) / "index.faiss"
        faiss.write_index(index._index, str(path))
        return path.stat().st_size / 2**20


def build(factory: str, base: np.ndarray, build_threads: int, chunk: int,
          ef_construction: int) -> tuple[FaissIndex, float, float]:
    """``(index, seconds, resident MB added)``: ``base`` added through ``FaissIndex`` in chunks, with a
    progress line per chunk; the first chunk trains the index (IVF) so it is at least ``TRAIN_SAMPLE``.
    Resident growth undercounts when an earlier section's freed memory is reused: see ``file_mb``."""
    faiss.omp_set_num_threads(build_threads)
    index = FaissIndex(base.shape[1], IndexConfig(factory=factory, hnsw_m=32, ef_construction=ef_construction))
    before, started = rss_mb(), time.perf_counter()
    bounds = [0, min(len(base), max(chunk, TRAIN_SAMPLE if "IVF" in factory else chunk))]
    bounds += list(range(bounds[1] + chunk, len(base), chunk)) + ([len(base)] if bounds[1] < len(base) else [])
    for low, high in zip(bounds, bounds[1:]):
        index.add(np.arange(low, high, dtype=np.int64), base[low:high])
        spent = time.perf_counter() - started
        print(f"    {factory}: {high:,} / {len(base):,} added, {spent:.0f} s, "
              f"about {spent / high * (len(base) - high):.0f} s to go ({build_threads} threads)", flush=True)
    return index, time.perf_counter() - started, rss_mb() - before


def measure(index: FaissIndex, label: str, knobs: dict, queries: np.ndarray, truth: np.ndarray,
            args: argparse.Namespace, single_n: int, repeats: int) -> dict:
    """One search setting: recall, and the median of ``repeats`` alternating 1-caller / N-caller timings."""
    index.tune(**knobs)
    search: Search = lambda q: index.search(q, K)  # noqa: E731
    single_qps(search, queries[:min(single_n, 50)])  # warm-up, untimed: neither timing below starts cold
    ones, many = [], []
    for _ in range(repeats):
        qps, found = single_qps(search, queries[:single_n])
        ones.append(qps)
        qps, found_n = concurrent_qps(search, queries[:single_n], args.concurrent)
        many.append(qps)
    qps1, qpsn = float(np.median(ones)), float(np.median(many))
    row = {"setting": label, "qps_single": qps1, "qps_concurrent": qpsn, "concurrent": args.concurrent,
           "concurrent_same_answers": float(np.mean(np.all(found_n == found, axis=1))),
           "qps_batch": batch_qps(search, queries, args.threads), "recall@10": recall_at(found, truth[:single_n])}
    print(f"  {label}: recall@10 {row['recall@10']:.3f}; single-query QPS {qps1:.0f} with 1 caller, {qpsn:.0f} "
          f"with {args.concurrent}; batched {row['qps_batch']:.0f}", flush=True)
    return row


def measure_section(section: Section, base: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                    args: argparse.Namespace) -> tuple[list[dict], FaissIndex]:
    name = f"{section.factory} ({len(base):,})"
    print(f"\n{name}: building {section.factory!r}", flush=True)
    index, seconds, memory = build(section.factory, base, args.build_threads, args.chunk, args.ef_construction)
    flat = section.factory == "Flat"  # exact search is slow and steady: a fifth of the queries, timed once
    single_n, repeats = (max(args.single // 5, 50), 1) if flat else (args.single, args.repeats)
    size = file_mb(index)
    rows = [{"index": name, "factory": section.factory, "build_s": seconds, "build_threads": args.build_threads,
             "memory_mb": memory, "file_mb": size, "bytes_per_vector": size * 2**20 / len(base),
             **measure(index, label, knobs, queries, truth, args, single_n, repeats)}
            for label, knobs in section.settings]
    return rows, index


def wrapper_vs_raw(index: FaissIndex, queries: np.ndarray, threads: int, rounds: int = 3) -> dict:
    """Single-query and batched timings of the wrapper and of raw FAISS on the very same index, the
    two interleaved and taking turns going first (whoever goes second finds the query in cache)."""
    faiss.omp_set_num_threads(1)
    raw = index._index
    spent = {"raw": 0.0, "wrapper": 0.0}
    calls = {"raw": lambda q: raw.search(q, K), "wrapper": lambda q: index.search(q, K)}

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


def filtered(index: FaissIndex, base: np.ndarray, queries: np.ndarray, share: float, k: int = K) -> dict:
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
        build_s = time.perf_counter() - started
        qps1, found = single_qps(lambda q: index.search(q, K), queries[:single_n])
        started = time.perf_counter()
        index.search(queries, K)
        qpsb = len(queries) / (time.perf_counter() - started)
        on_disk = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20
        index.close()
        return {"index": f"milvus-lite FLAT ({len(base):,})", "setting": "exact", "build_s": build_s,
                "file_mb": on_disk, "memory_mb": rss_mb() - before, "bytes_per_vector": on_disk * 2**20 / len(base),
                "qps_single": qps1,
                "qps_batch": qpsb, "recall@10": recall_at(found, truth[:single_n])}


# --- the run ---------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-store", type=Path, default=Path(".vitrine/bench/shopee"),
                        help="store whose trained model embeds the catalog that the mixture is fitted to")
    parser.add_argument("--model", default="shopee", help="trained model under the source store's models/")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=1000, help="queries timed one per call (Flat uses a fifth)")
    parser.add_argument("--components", type=int, default=256)
    parser.add_argument("--milvus-n", type=int, default=100_000, help="vectors in the milvus-lite run")
    parser.add_argument("--hnsw-n", type=int, default=0, help="vectors in the HNSW runs (0 = all)")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads of a batched search")
    parser.add_argument("--concurrent", type=int, default=2, help="threads sending one query per call at once")
    parser.add_argument("--repeats", type=int, default=3, help="single-query timings per setting (median reported)")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1, help="OpenMP threads of a build")
    parser.add_argument("--ef-construction", type=int, default=IndexConfig().ef_construction,
                        help="HNSW build beam (default: vitrine's index.ef_construction)")
    parser.add_argument("--chunk", type=int, default=50_000, help="vectors per add while building (progress lines)")
    parser.add_argument("--only", default="", help=f"comma-separated sections to run: {', '.join(ALL_SECTIONS)}")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def chosen_sections(args: argparse.Namespace) -> list[str]:
    only, skip = (set(filter(None, text.split(","))) for text in (args.only, args.skip))
    unknown = (only | skip) - set(ALL_SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL_SECTIONS)}")
    return [name for name in ALL_SECTIONS if (not only or name in only) and name not in skip]


def ground_truth(queries: np.ndarray, base: np.ndarray, threads: int) -> np.ndarray:
    """Exact top-10 ids (cached per size)."""
    path = CACHE / f"truth-{len(base)}x{base.shape[1]}-q{len(queries)}.npy"
    if path.is_file():
        return np.load(path)
    started = time.perf_counter()
    truth = exact(queries, base, threads)
    np.save(path, truth)
    print(f"exact ground truth over {len(base):,} vectors in {time.perf_counter() - started:.0f} s", flush=True)
    return truth


def exact(queries: np.ndarray, base: np.ndarray, threads: int) -> np.ndarray:
    faiss.omp_set_num_threads(threads)
    return faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)[1]


def run_faiss(name: str, base: np.ndarray, queries: np.ndarray, args: argparse.Namespace, results: dict) -> None:
    section = SECTIONS[name]
    subset = base[:results["hnsw_n"]] if section.on_hnsw_subset else base
    truth = ground_truth(queries, subset, args.threads)
    rows, index = measure_section(section, subset, queries, truth, args)
    results["rows"].extend(rows)
    if name in ("flat", "hnsw"):
        label = rows[0]["index"]
        if name == "hnsw":  # filtered searches at vitrine's default beam, stated in the table
            default_ef = IndexConfig().ef_search
            index.tune(ef_search=default_ef)
            label += f", efSearch={default_ef}"
        results["filtered"] += [{"index": label, **filtered(index, subset, queries, share)} for share in (0.01, 0.1)]
    if name == "hnsw":
        index.tune(ef_search=64)
        results["wrapper_vs_raw"] = wrapper_vs_raw(index, queries[:args.single], args.threads)


def main() -> None:
    args = parse_args()
    sections = chosen_sections(args)
    CACHE.mkdir(parents=True, exist_ok=True)
    source = source_embeddings(args.source_store, args.model)
    base, queries = mixture_vectors(source, args.n, args.queries, args.components)
    print(f"{len(base):,} x {base.shape[1]} vectors from a mixture fitted to {len(source):,} trained embeddings; "
          f"sections: {', '.join(sections)}", flush=True)
    results: dict = {"n": len(base), "dim": base.shape[1], "threads": args.threads, "concurrent": args.concurrent,
                     "repeats": args.repeats, "ef_construction": args.ef_construction,
                     "build_threads": args.build_threads, "hnsw_n": min(args.hnsw_n or len(base), len(base)),
                     "sections": sections, "rows": [], "filtered": []}
    for name in sections:
        if name in SECTIONS:
            run_faiss(name, base, queries, args, results)
    if "milvus" in sections and args.milvus_n:
        subset = base[:args.milvus_n]
        results["rows"].append(measure_milvus(subset, queries, ground_truth(queries, subset, args.threads),
                                              min(args.single, 200)))
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


# --- the report ------------------------------------------------------------------------------------

TARGET_RECALL, TARGET_QPS = 0.95, 1000


def report(results: dict) -> None:
    print(f"\n### {results['n']:,} x {results['dim']} vectors (HNSW on the first {results['hnsw_n']:,}); "
          f"builds on {results['build_threads']} threads; HNSW efConstruction={results['ef_construction']}\n")
    print(f"QPS single: one query per call, from 1 caller or from {results['concurrent']} callers at once (each on one "
          f"thread; a {results['concurrent']}-core server answering {results['concurrent']} requests at a time), median "
          f"of {results['repeats']} timings. QPS batch: all queries in one call on {results['threads']} threads.\n")
    n = results["concurrent"]
    print("Memory: 'index MB' is the index as FAISS writes it (milvus-lite: its files on disk), 'RSS MB' the "
          "process's resident growth while building (includes vitrine's key map; undercounts when memory freed "
          "by an earlier section is reused); bytes/vector from 'index MB'.\n")
    print(f"| index | setting | build s | index MB | RSS MB | bytes/vector | QPS single, 1 caller | "
          f"QPS single, {n} callers | {n} callers / 1 | QPS batch | recall@10 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results["rows"]:
        concurrent = row.get("qps_concurrent")
        both = (f"{concurrent:.0f} | {concurrent / row['qps_single']:.2f}" if concurrent else "— | —")
        print(f"| {row['index']} | {row['setting']} | {row['build_s']:.1f} | {row['file_mb']:.0f} | "
              f"{row['memory_mb']:.0f} | {row['bytes_per_vector']:.0f} | {row['qps_single']:.0f} | {both} | "
              f"{row['qps_batch']:.0f} | {row['recall@10']:.3f} |")
    differing = [row for row in results["rows"] if row.get("concurrent_same_answers", 1.0) < 1.0]
    for row in differing:
        print(f"\nNote: {row['index']} {row['setting']}: concurrent callers got the single caller's answers for "
              f"{row['concurrent_same_answers']:.1%} of queries")
    report_target(results)
    report_wrapper(results)
    report_filtered(results)


def report_target(results: dict) -> None:
    hnsw = [row for row in results["rows"] if row["index"].startswith("HNSW")]
    if not hnsw:
        return
    n = results["concurrent"]
    print(f"\n| target: recall@10 ≥ {TARGET_RECALL} at ≥ {TARGET_QPS:,} single-query QPS with {n} callers | "
          f"recall@10 | QPS single, {n} callers | verdict |\n|---|---:|---:|---|")
    for name in dict.fromkeys(row["index"] for row in hnsw):
        good = [row for row in hnsw if row["index"] == name and row["recall@10"] >= TARGET_RECALL]
        if not good:
            print(f"| {name}: no setting reaches recall {TARGET_RECALL} | — | — | missed |")
            continue
        best = max(good, key=lambda row: row["qps_concurrent"])
        verdict = "met" if best["qps_concurrent"] >= TARGET_QPS else "missed"
        print(f"| {name}, fastest setting with recall ≥ {TARGET_RECALL}: {best['setting']} | {best['recall@10']:.3f} | "
              f"{best['qps_concurrent']:.0f} | {verdict} |")


def report_wrapper(results: dict) -> None:
    if "wrapper_vs_raw" not in results:
        return
    w = results["wrapper_vs_raw"]
    print(f"\n| vitrine FaissIndex vs raw faiss (same HNSW32 index of {results['hnsw_n']:,}, efSearch=64) | value |\n|---|---:|")
    print(f"| single query: raw µs | {w['raw_us']:.1f} |\n| single query: wrapper µs | {w['wrapper_us']:.1f} |")
    print(f"| single query: wrapper / raw | {w['single_ratio']:.3f} |\n| batch: wrapper / raw | {w['batch_ratio']:.3f} |")


def report_filtered(results: dict) -> None:
    if not results.get("filtered"):
        return
    print("\n| index | filter share | allowed ids | rows with exactly k | results inside filter | recall@10 vs brute force | QPS batch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in results["filtered"]:
        print(f"| {row['index']} | {row['share']:.0%} | {row['allowed']:,} | {row['rows_with_k']:.3f} | "
              f"{row['results_inside_filter']:.3f} | {row['recall@10']:.3f} | {row['qps_batch']:.0f} |")


if __name__ == "__main__":
    main()
