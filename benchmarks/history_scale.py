"""Query-history evidence at shop scale: the time per query to read the best past-query cosine and count for
K candidates, as the history grows (``vitrine.rerank.history.QueryHistory.evidence``).

    python benchmarks/history_scale.py [--rows 10000,100000,1000000] [--dim 256] [--per-product 30] [--k 50]

Synthetic unit vectors; ``per-product`` past queries per product on average (Grocery has 33), so the catalog
grows with the history. Prints p50/p99 in ms per query. To compare two versions of the code, run it once
from each (e.g. an older commit checked out with ``git worktree`` and put first on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    from vitrine.rerank.history import QueryHistory

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,100000,1000000", help="history sizes (past queries), comma-separated")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--per-product", type=int, default=30, help="mean past queries per product")
    parser.add_argument("--k", type=int, default=50, help="candidates per query")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    print("| history rows | products | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for rows in (int(r) for r in args.rows.split(",")):
        products = max(1, rows // args.per_product)
        vectors = rng.standard_normal((rows, args.dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        history = QueryHistory(vectors, rng.integers(0, products, rows), [f"q{i}" for i in range(rows)])
        queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        candidates = rng.integers(0, products, (args.queries, args.k))
        history.evidence(queries[0], candidates[0], "q0")  # warm up
        times = []
        for query, keys, source in zip(queries, candidates, (f"q{i}" for i in range(args.queries))):
            start = time.perf_counter()
            history.evidence(query, keys, source)
            times.append((time.perf_counter() - start) * 1000)
        p50, p99 = np.percentile(times, [50, 99])
        print(f"| {rows:,} | {products:,} | {p50:.3f} | {p99:.3f} |", flush=True)
        del vectors, history


if __name__ == "__main__":
    main()
