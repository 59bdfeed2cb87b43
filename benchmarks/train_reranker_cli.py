"""``vitrine train-reranker`` as users run it, with and without cross-fitting (issue 5), on Grocery val.

    python benchmarks/train_reranker_cli.py [--data ../shared/data] [--store .vitrine/bench-rerank/grocery]

``--store`` must hold trained towers (``benchmarks/reranking.py`` leaves one, model ``full``). The store is
copied (catalog, index, feature cache, its towers; ``[rerank]`` reset to the defaults) into a temporary
folder, and the CLI trains two
rerankers there: ``rerank.cross_fit = 3`` (the default: fold retrievers build the training lists) and
``0`` (lists from the store's own towers, which were trained on those very queries). Val lists come
from the store's towers and each reranker's own history; the table gives instance hit@1 and NDCG@10.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trained_embeddings import print_table  # noqa: E402

VARIANTS = {"cross-fitted (rerank.cross_fit = 3)": 3, "store's own towers (rerank.cross_fit = 0)": 0}
STRATEGIES = ("retrieval", "pointwise", "listwise", "hybrid")


def copy_store(source: Path, target: Path) -> None:
    """What a reranker needs: catalog, index, caches and the active towers (not the other models)."""
    from vitrine.catalog.store import Store
    from vitrine.config import RerankConfig

    target.mkdir(parents=True)
    for name in ("catalog.sqlite", "index", "images", "cache", "config.toml", "manifest.json"):
        path = source / name
        if path.is_dir():
            shutil.copytree(path, target / name)
        elif path.is_file():
            shutil.copy2(path, target / name)
    store = Store.open(target)
    config = store.config()
    shutil.copytree(source / "models" / config.embedding.model, target / "models" / config.embedding.model)
    # A store's config keeps every setting as it was when last saved: train with this version's defaults.
    config.rerank = RerankConfig()
    config.save(store.config_path)


def main() -> None:
    from typer.testing import CliRunner

    import vitrine
    from vitrine.catalog.datasets import load_splits
    from vitrine.cli import app
    from vitrine.config import data_dir
    from vitrine.rerank import product_table
    from vitrine.rerank.reranker import Reranker
    from vitrine.rerank.train import build_lists, evaluate_lists, val_queries

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="folder with the datasets (default: $VITRINE_DATA)")
    parser.add_argument("--store", type=Path, default=Path(".vitrine/bench-rerank/grocery"),
                        help="a Grocery store with trained towers")
    args = parser.parse_args()
    spec = f"grocery:{(args.data or data_dir()) / 'grocery-store'}"
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as work:
        store = Path(work) / "store"
        copy_store(args.store, store)
        for label, folds in VARIANTS.items():
            name = f"rerank-cv{folds}"
            start = time.perf_counter()
            result = CliRunner().invoke(app, ["train-reranker", str(store), "--data", spec, "--name", name,
                                              "--set", f"rerank.cross_fit={folds}"])
            if result.exit_code:
                raise SystemExit(result.output)
            seconds = time.perf_counter() - start
            summary = [line for line in result.output.splitlines() if line.startswith(("trained reranker", "held-back"))]
            print(f"{label}: {seconds:.0f} s\n" + "\n".join(summary), flush=True)
            engine = vitrine.open(store)
            reranker = Reranker.load(engine.store.models_dir / name)
            splits = load_splits(spec)
            lists = build_lists(val_queries(splits, {p.id: p for p in engine.store.catalog}), engine.embedder,
                                product_table(engine.store, engine.embedder), k=engine.store.config().rerank.candidates,
                                history=reranker.history, vector_inputs=reranker.spec.vectors)
            for strategy in STRATEGIES:
                figures = evaluate_lists(reranker, lists, strategy)
                row = rows.setdefault(strategy, {})
                row[f"hit@1, {label}"] = figures["instance_hit_rate"]
                row[f"NDCG@10, {label}"] = figures["ndcg@10"]
    print_table(f"Grocery val ({len(lists)} queries), vitrine train-reranker", rows,
                [column for column in next(iter(rows.values()))])


if __name__ == "__main__":
    main()
