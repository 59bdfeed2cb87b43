"""The reranker inside a store: train-reranker on a pairs file, then search with every strategy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vitrine
from conftest import write_jsonl
from vitrine.cli import app
from vitrine.errors import StoreError
from vitrine.rerank.calibration import expected_calibration_error

QUERIES = {"apple": ["red apple", "sweet apple fruit", "crisp apple"],
           "mug": ["coffee mug", "tea cup", "ceramic mug"],
           "scarf": ["wool scarf", "winter scarf", "knitted scarf"],
           "cone": ["traffic cone", "road safety cone", "plastic cone"]}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained_store(built_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built store with a reranker trained (once, through the CLI) on a pairs file."""
    root = tmp_path_factory.mktemp("rerank")
    store = root / "store"
    shutil.copytree(built_store, store)
    pairs = write_jsonl(root / "pairs.jsonl", [{"query_text": text, "product_id": pid, "grade": 3}
                                               for pid, texts in QUERIES.items() for text in texts])
    result = run("train-reranker", store, "--data", pairs, "--epochs", "3", "--set", "rerank.dim=16")
    assert result.exit_code == 0, result.output
    assert "trained reranker rerank on" in result.output
    assert "held-back queries, NDCG@10: retrieval" in result.output and "default strategy: hybrid" in result.output
    return store


def test_train_reranker_then_search_with_every_strategy(trained_store: Path):
    store = trained_store
    folder = store / "models" / "rerank"
    assert {"config.json", "listwise.safetensors", "pointwise.safetensors", "training.json", "history.npz",
            "training.png", "reliability.png"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "training.json").read_text())["plots"] == ["training.png", "reliability.png"]
    assert min((folder / name).stat().st_size for name in ("training.png", "reliability.png")) > 10_000

    engine = vitrine.open(store)
    plain = engine.search(text="a warm winter scarf", k=4)
    for strategy in ("hybrid", "listwise", "pointwise", "sliding"):
        hits = engine.search(text="a warm winter scarf", k=4, rerank=strategy, candidates=4)
        assert sorted(h.product.id for h in hits) == sorted(h.product.id for h in plain)  # same set, none lost
        assert [h.rank for h in hits] == [1, 2, 3, 4]
        assert len(engine.search(text="scarf", k=2, rerank=strategy)) == 2
    hybrid = engine.search(text="a warm winter scarf", k=4, rerank="hybrid")
    assert all(0.0 <= h.score <= 1.0 for h in hybrid)  # r is a probability
    reranker = engine.reranker()  # pointwise was served above without the cosines between candidates
    assert reranker.relations_read("pointwise") == {"relations": "none"}
    assert reranker.relations_read("hybrid") == reranker.relations_read("sliding") == {"relations": "vectors"}

    result = run("search", store, "--text", "coffee mug", "-k", "2", "--rerank", "hybrid", "--candidates", "4", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 2


def test_eval_measures_a_reranker_as_search_serves_it(trained_store: Path, tmp_path: Path):
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": "a warm winter scarf", "relevant": {"scarf": 1}},
                                                 {"text": "hot coffee", "relevant": {"mug": 2}}])
    result = run("eval", trained_store, queries, "--rerank", "hybrid", "--candidates", "4")
    assert result.exit_code == 0, result.output
    assert "the top 4 reranked by hybrid" in result.output
    report = json.loads(sorted((trained_store / "reports").glob("eval-q-*.json"))[-1].read_text())
    assert report["rerank"] == "hybrid" and report["candidates"] == 4
    engine = vitrine.open(trained_store)
    r, matches = [], []
    for query in report["per_query"]:
        served = engine.search(text=query["text"], k=4, rerank="hybrid", candidates=4)
        assert query["ranked"] == [h.product.id for h in served]
        r += [h.score for h in served]
        matches += [query["relevant"].get(h.product.id, 0) == max(query["relevant"].values()) for h in served]
    # r's calibration against the labels: each query is about the product it grades highest (the store has four
    # products, all among the 4 candidates).
    calibration = report["calibration"]
    assert calibration["candidates"] == 8 and calibration["share_exact"] == pytest.approx(2 / 8)
    assert calibration["ece"] == pytest.approx(expected_calibration_error(np.array(r), np.array(matches)))
    assert calibration["mean_r"] == pytest.approx(np.mean(r))
    assert "r = P(exact match) over 8 reranked candidates: ECE" in " ".join(result.output.split())
    markdown = sorted((trained_store / "reports").glob("eval-q-*.md"))[-1].read_text()
    assert f"ECE {calibration['ece']:.4f} (over resampled query sets 95% within" in markdown
    # The reliability diagram's points: the candidates per bin of r and the share of exact matches among them.
    r, matches = np.array(r), np.array(matches)
    which = np.minimum((r * 10).astype(int), 9)
    assert [(b["count"], b["observed"]) for b in calibration["bins"]] == [
        (int((which == k).sum()), pytest.approx(matches[which == k].mean())) for k in sorted(set(which))]
    assert f"| {calibration['bins'][0]['count']} | {calibration['bins'][0]['mean']:.3f} |" in markdown
    plot = sorted((trained_store / "reports").glob("eval-q-*-reliability.png"))[-1]
    assert f"![reliability of r]({plot.name})" in markdown and str(plot) in " ".join(result.output.split())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run("eval", trained_store, queries, "--rerank", "pointwise", "--candidates", "4")
    assert result.exit_code == 0 and "ECE" not in result.output  # its scores are not r
    assert "reliability.png" not in result.output
    result = run("eval", trained_store, queries, "--rerank", "telepathic")
    assert result.exit_code == 2 and "telepathic" in result.output and "Traceback" not in result.output


def test_served_reranker_models_run_on_the_configured_threads(trained_store: Path):
    def session_threads(engine) -> dict[str, int]:
        return {kind: runner.session.session.get_session_options().intra_op_num_threads
                for kind, runner in engine.reranker().runners.items()}

    assert session_threads(vitrine.open(trained_store)) == {"listwise": 1, "pointwise": 1}
    assert session_threads(vitrine.open(trained_store, config_overrides={"rerank.threads": 2})) == {
        "listwise": 2, "pointwise": 2}


def test_the_reranker_keeps_every_training_query_as_history(trained_store: Path):
    engine = vitrine.open(trained_store)
    history = engine.reranker().history
    assert len(history) == sum(len(texts) for texts in QUERIES.values())
    keys = {p.id: key for key, p in engine.store.catalog.by_keys(history.keys.tolist()).items()}
    assert sorted(keys) == sorted(QUERIES)
    # A training query meets its own past self at cosine 1, unless it is left out (as in training lists).
    source = history.sources[0]
    vector = history.vectors[0]
    best, count = history.evidence(vector, [int(history.keys[0])])
    assert best[0] == pytest.approx(1.0, abs=1e-2) and count[0] == 3
    best, count = history.evidence(vector, [int(history.keys[0])], exclude=source)
    assert best[0] < 0.99 and count[0] == 2


def test_reranked_searches_take_candidates_without_the_query_bank(trained_store: Path, tmp_path: Path):
    """The reranker learnt from lists no query bank had touched, so its candidates keep their plain scores."""
    from vitrine.embedding import Query

    store = tmp_path / "store"
    shutil.copytree(trained_store, store)
    vitrine.open(store).fit_querybank([Query(text=t) for t in ("coffee mug", "tea cup", "ceramic mug", "mug")], k=2)
    with_bank, without = vitrine.open(store), vitrine.open(store, config_overrides={"search.querybank": False})
    assert with_bank.querybank() is not None

    def served(engine, **options) -> list[tuple[str, float]]:
        return [(h.product.id, h.score) for h in engine.search(text="a mug for hot tea", k=4, **options)]

    plain_scores = dict(served(without))
    for product, score in served(with_bank):  # the bank is in force for plain searches
        assert score < plain_scores[product] - 0.01
    for strategy in ("hybrid", "pointwise"):
        assert served(with_bank, rerank=strategy, candidates=4) == served(without, rerank=strategy, candidates=4)


def test_train_reranker_says_what_r_reads_on_queries_its_calibrator_has_not_seen(built_store: Path, tmp_path: Path):
    store = tmp_path / "store"
    shutil.copytree(built_store, store)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query_text": text, "product_id": pid, "grade": 3}
                                                   for pid, texts in QUERIES.items() for text in texts])
    result = run("train-reranker", store, "--data", pairs, "--epochs", "2", "--set", "rerank.dim=16",
                 "--set", "rerank.dev_fraction=0.5")
    assert result.exit_code == 0, result.output
    calibration = json.loads((store / "models" / "rerank" / "training.json").read_text())["calibration"]
    low, high = calibration["dev_ece_held_out_95%"]
    assert 0.0 <= low <= high <= 1.0 and 0.0 <= calibration["dev_ece_held_out"] <= 1.0
    assert (f"ECE of r on queries the calibrator has not seen (each half of the held-back queries calibrated on the "
            f"other): {calibration['dev_ece_held_out']:.3f}") in " ".join(result.output.split())


def test_train_reranker_hides_a_share_of_products_from_the_history_like_new_listings(built_store: Path,
                                                                                     tmp_path: Path):
    """One product of four has no training query: a quarter of the others (one) is held out whole, left out of the
    history every training list reads, as a new listing is absent from a shop's logs."""
    store = tmp_path / "store"
    shutil.copytree(built_store, store)
    asked = {pid: texts for pid, texts in QUERIES.items() if pid != "cone"}
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query_text": text, "product_id": pid, "grade": 3}
                                                   for pid, texts in asked.items() for text in texts])
    result = run("train-reranker", store, "--data", pairs, "--epochs", "2", "--set", "rerank.dim=16")
    assert result.exit_code == 0, result.output
    report = json.loads((store / "models" / "rerank" / "training.json").read_text())
    assert report["unseen_share"] == pytest.approx(0.25) and report["queries_held_out_whole"] == 3
    result = run("train-reranker", store, "--data", pairs, "--epochs", "2", "--set", "rerank.dim=16",
                 "--set", "rerank.new_products=false", "--name", "plain")
    report = json.loads((store / "models" / "plain" / "training.json").read_text())
    assert report["unseen_share"] == 0.0 and report["queries_held_out_whole"] == 0

    from vitrine.catalog.datasets import load_splits
    from vitrine.config import RerankConfig
    from vitrine.rerank import product_table
    from vitrine.rerank.history import NO_HISTORY
    from vitrine.rerank.train import build_lists, held_out_whole, history_without, training_queries

    engine = vitrine.open(store)
    table = product_table(engine.store, engine.embedder)
    queries = training_queries(load_splits(str(pairs)), {p.id: p for p in engine.store.catalog})
    vectors = engine.embedder.encode_queries([q.query for q in queries])
    held = held_out_whole(queries, 0.25, RerankConfig().seed)
    products = {pid for q in queries if q.key in held for pid, level in q.levels.items() if level == 0}
    assert len(held) == 3 and len(products) == 1  # all three queries of one product
    held_key = engine.catalog.key_of(products.pop())
    lists = build_lists(queries, engine.embedder, table, k=4, history=history_without(queries, vectors, table, held),
                        query_vectors=vectors)
    column = lists[0].spec.column("history_cos")
    for found in lists:  # the held product has no past query in any list; the others have theirs
        for key, cosine in zip(found.keys, found.items[:, column]):
            assert (cosine > NO_HISTORY) == (key != held_key and key != engine.catalog.key_of("cone"))


def test_rerank_errors_are_one_line(built_store: Path):
    store = built_store  # nothing here writes to it
    with pytest.raises(StoreError, match="no reranker here"):
        vitrine.open(store).search(text="apple", rerank="hybrid")
    result = run("search", store, "--text", "mug", "--rerank", "hybrid")
    assert result.exit_code == 2 and "error:" in result.output and "train-reranker" in result.output
    result = run("search", store, "--text", "mug", "--candidates", "5")
    assert result.exit_code == 2 and "--candidates only applies with --rerank" in result.output
    result = run("train-reranker", store, "--data", "nope:thing")
    assert result.exit_code == 2 and "unknown dataset 'nope'" in result.output


def test_service_offers_and_runs_the_stores_reranker(trained_store: Path):
    from fastapi.testclient import TestClient

    from vitrine.config import ServeConfig
    from vitrine.serve import create_app

    with TestClient(create_app(vitrine.open(trained_store), ServeConfig(save_delay=0.2))) as client:
        offered = client.get("/api/info").json()["rerankers"]
        assert offered[:2] == ["none", "hybrid"] and {"listwise", "pointwise", "sliding"} <= set(offered)
        plain = client.get("/search", params={"q": "a warm winter scarf", "k": 4}).json()
        reranked = client.get("/search", params={"q": "a warm winter scarf", "k": 4, "rerank": "hybrid"}).json()
        assert reranked["query"]["rerank"] == "hybrid" and "rerank" in reranked["timings_ms"]
        assert "rerank" not in plain["timings_ms"]
        assert sorted(h["product"]["id"] for h in reranked["results"]) == sorted(
            h["product"]["id"] for h in plain["results"])
        wrong = client.get("/search", params={"q": "scarf", "rerank": "magic"})
        assert wrong.status_code == 400 and "this store offers: none, hybrid" in wrong.json()["error"]


def test_reranker_follows_catalog_changes(trained_store: Path):
    from vitrine.catalog import Product

    engine = vitrine.open(trained_store)  # runs last in this module: it changes the catalog
    engine.search(text="mug", rerank="hybrid")
    engine.catalog.upsert([Product("kettle", "Steel Kettle", "A kettle to boil water for tea.")])
    engine.sync(progress=False)
    hits = engine.search(text="kettle for tea", k=5, rerank="hybrid", candidates=5)
    assert "kettle" in {h.product.id for h in hits} and len({h.product.id for h in hits}) == 5
    with pytest.raises(Exception, match="unknown rerank strategy"):
        engine.search(text="mug", rerank="best")
    assert np.isfinite([h.score for h in hits]).all()


def test_train_reranker_cross_fits_over_trained_towers(built_store: Path, tmp_path: Path):
    """With trained towers, each fold's lists come from a retriever trained without that fold's queries;
    the store keeps serving its own towers."""
    store = tmp_path / "store"
    shutil.copytree(built_store, store)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query_text": text, "product_id": pid, "grade": 3}
                                                   for pid, texts in QUERIES.items() for text in texts])
    tiny = ["--set", "training.hidden=32", "--set", "training.dim=16", "--set", "training.matryoshka=",
            "--set", "training.batch_size=4"]
    result = run("train", store, "--data", pairs, "--name", "towers", "--epochs", "2", *tiny)
    assert result.exit_code == 0, result.output
    assert run("index", store, "--reembed").exit_code == 0
    result = run("train-reranker", store, "--data", pairs, "--epochs", "2", "--set", "rerank.dim=16",
                 "--set", "rerank.cross_fit=2", *tiny)
    assert result.exit_code == 0, result.output
    assert "cross-fitted, 2 folds" in result.output
    report = json.loads((store / "models" / "rerank" / "training.json").read_text())
    assert report["cross_fit_folds"] == 2 and report["train_lists"] + report["dev_lists"] == 12
    assert report["unseen_share"] == 0.0  # every product has queries: no product held out whole
    folds = [json.loads((store / "models" / f"rerank-fold{f}" / "training.json").read_text()) for f in (0, 1)]
    # Each fold retriever saw only the other fold's share of the 12 training queries: together, each once.
    assert sum(fold["examples"] - fold["keyword_examples"] for fold in folds) == 12
    engine = vitrine.open(store)
    assert engine.store.config().embedding.model == "towers"  # not switched to a fold retriever
    # Each fold retriever was trained as the store's towers were: --epochs 2, which config.toml does not hold.
    assert engine.store.config().training.epochs != 2 and all(fold["training"]["epochs"] == 2 for fold in folds)
    models = json.loads(run("info", store).output)["models"]
    assert models["towers"] == {"kind": "towers", "objective": "contrastive", "stages": None, "products": 4,
                                "epochs": 2, "best_epoch": models["towers"]["best_epoch"], "in_use": True}
    assert models["rerank"]["kind"] == "reranker" and models["rerank"]["in_use"]
    assert models["rerank"]["lists"] == report["train_lists"]
    assert [models[f"rerank-fold{f}"]["in_use"] for f in (0, 1)] == [False, False]
    assert len(engine.search(text="a warm winter scarf", k=3, rerank="hybrid")) == 3
