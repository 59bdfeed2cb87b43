"""Service load benchmark: text and photo searches against a local `vitrine serve`, at several concurrencies.

    python benchmarks/service_load.py [--store STORE] [--duration 60] [--concurrency 1,4,16] [--rerank hybrid]
                                      [--kinds text,photo] [--json out.json]

Builds a zero-shot store from the Grocery Store Dataset in a temporary folder (unless --store is
given), starts `vitrine serve` on a free loopback port as a subprocess, and for each kind (text,
photo; ``--kinds`` picks) and each concurrency runs a closed loop of that many async httpx clients for --duration
seconds. Prints QPS, p50 and p99 latency (client-side, per request) and the error count, then the
throughput ratio of concurrency 16 to 4. Traffic goes to 127.0.0.1 only; every loop is bounded in time.
With --rerank, every search asks for that reranking strategy over the store's `rerank.candidates`
candidates (the store must hold a trained reranker: `vitrine train-reranker`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from vitrine.config import Config, data_dir

TEXT_QUERIES = ["oat milk", "green apple", "red bell pepper", "organic yoghurt", "juice with orange",
                "something sweet for dessert", "lactose free milk", "vanilla soy yoghurt", "a ripe banana",
                "potatoes for mash", "mango", "fresh ginger", "sour cream", "cucumber", "lemon"]


def build_store(folder: Path, dataset: Path) -> Path:
    store = folder / "store"
    for command in (["ingest", str(store), str(dataset)], ["index", str(store)]):
        subprocess.run([sys.executable, "-c", "from vitrine.cli import main; main()", *command], check=True,
                       stdout=subprocess.DEVNULL)
    return store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(store: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-c", "from vitrine.cli import main; main()", "serve", str(store),
                               "--port", str(port)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.kill()
    raise SystemExit("the server did not become ready within 180 s")


async def load(url: str, kind: str, photos: list[bytes], concurrency: int, duration: float,
               rerank: str = "none") -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def worker(n: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        i = n
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                if kind == "text":
                    response = await client.get("/search", params={"q": TEXT_QUERIES[i % len(TEXT_QUERIES)], "k": 10,
                                                                       "rerank": rerank})
                else:
                    response = await client.post("/search", files={"image": ("q.jpg", photos[i % len(photos)])},
                                                 data={"k": "10", "rerank": rerank})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok
            i += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(n, client) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"kind": kind, "concurrency": concurrency, "requests": len(latencies), "qps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "errors": errors}


def check_warm_up(row: dict) -> None:
    if row["errors"]:
        raise SystemExit(f"{row['errors']} of {row['requests']} warm-up {row['kind']} searches failed "
                         "(with --rerank, does the store hold a trained reranker?)")


def describe(store: Path | None, rerank: str) -> tuple[str, str]:
    """The embedding the store serves and the reranking asked for, for the table's title."""
    if store is None:
        return "zero-shot", "no reranking"
    config = Config.load(store / "config.toml")
    reranking = "no reranking" if rerank == "none" else f"{rerank} reranking of {config.rerank.candidates} candidates"
    return config.embedding.kind, reranking


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder holding grocery-store/ (default: $VITRINE_DATA)")
    parser.add_argument("--store", type=Path, default=None, help="serve this store instead of building one")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per (kind, concurrency)")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--kinds", default="text,photo", help="comma-separated query kinds to load (text, photo)")
    parser.add_argument("--rerank", default="none", help="reranking strategy every search asks for (hybrid, ...)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    dataset = (args.data or data_dir()) / "grocery-store" / "dataset"
    # Query photos: phone shots from the val split, sent as uploads (decoded and encoded every time).
    lines = (dataset / "val.txt").read_text().splitlines()
    photos = [(dataset / line.split(",")[0].strip()).read_bytes() for line in lines[::max(1, len(lines) // 40)][:40]]
    levels = [int(c) for c in args.concurrency.split(",")]
    kinds = [kind.strip() for kind in args.kinds.split(",")]
    if not set(kinds) <= {"text", "photo"}:
        raise SystemExit(f"--kinds: text and/or photo, got {args.kinds!r}")

    with tempfile.TemporaryDirectory() as folder:
        store = args.store or build_store(Path(folder), dataset)
        port = free_port()
        server = start_server(store, port)
        url = f"http://127.0.0.1:{port}"
        try:
            for kind in kinds:  # warm-up of each path
                check_warm_up(asyncio.run(load(url, kind, photos, 1, 3, args.rerank)))
            rows = [asyncio.run(load(url, kind, photos, c, args.duration, args.rerank)) for kind in kinds for c in levels]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

    embedding, reranking = describe(store if args.store else None, args.rerank)
    products = "Grocery, 81 products" if args.store is None else f"{args.store}"
    print(f"vitrine service load ({products}, {embedding}; {os.cpu_count()} cores; {args.duration:g} s per row; "
          f"{reranking})")
    print(f"  {'kind':<6} {'conc':>4} {'requests':>8} {'qps':>8} {'p50_ms':>8} {'p99_ms':>8} {'errors':>6}")
    for row in rows:
        print(f"  {row['kind']:<6} {row['concurrency']:>4} {row['requests']:>8} {row['qps']:>8.1f} {row['p50_ms']:>8.1f} "
              f"{row['p99_ms']:>8.1f} {row['errors']:>6}")
    by = {(row["kind"], row["concurrency"]): row for row in rows}
    for kind in ("text", "photo"):
        if (kind, 4) in by and (kind, 16) in by:
            print(f"  {kind}: throughput at concurrency 16 / at 4 = {by[(kind, 16)]['qps'] / by[(kind, 4)]['qps']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
