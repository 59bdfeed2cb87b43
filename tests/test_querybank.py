"""Querybank normalisation: each product's hubness over a bank of queries, and searches corrected by it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vitrine
from conftest import write_jsonl
from vitrine.catalog import Product, Store, ingest, load_products
from vitrine.cli import app
from vitrine.embedding import Query
from vitrine.engine.querybank import BANK_FILE, QueryBank
from vitrine.errors import StoreError


def exact_search(products: np.ndarray, keys: np.ndarray):
    def search(vectors: np.ndarray, depth: int):
        scores = vectors @ products.T
        order = np.argsort(-scores, axis=1)[:, :depth]
        return np.take_along_axis(scores, order, 1), keys[order]
    return search


def unit_rows(rng, n: int, dim: int = 8) -> np.ndarray:
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_hubness_is_the_mean_of_each_products_k_highest_cosines():
    rng = np.random.default_rng(0)
    products, bank = unit_rows(rng, 12), unit_rows(rng, 30)
    keys = np.arange(100, 112)
    fitted = QueryBank.fit(bank, exact_search(products, keys), keys, k=3, depth=12, embedder={"kind": "test"})
    expected = np.sort(bank @ products.T, axis=0)[-3:].mean(axis=0)  # exact: every product in every list
    np.testing.assert_allclose(fitted.hubness_of(keys), expected, atol=1e-6)
    assert fitted.queries == 30 and fitted.k == 3

    shallow = QueryBank.fit(bank, exact_search(products, keys), keys, k=3, depth=2, embedder={})
    kept = np.sort(bank @ products.T, axis=1)[:, -2:]  # what each bank query's top 2 kept
    assert shallow.floor == pytest.approx(float(kept.min()))
    for key, column in zip(keys, (bank @ products.T).T):
        reached = np.sort([c for c, row in zip(column, bank @ products.T) if c >= np.sort(row)[-2]])[::-1][:3]
        padded = list(reached) + [shallow.floor] * (3 - len(reached))
        assert shallow.hubness_of(np.array([key]))[0] == pytest.approx(np.mean(padded), abs=1e-6)
    assert shallow.hubness_of(np.array([999]))[0] == pytest.approx(np.median(shallow.hubness_of(keys)))  # added since
    hubless = exact_search(products[:6], keys[:6])  # the last six products: in the index, never reached
    unreached = QueryBank.fit(bank, hubless, keys, k=3, depth=2, embedder={})
    assert unreached.hubness_of(keys[6:]).tolist() == pytest.approx([unreached.floor] * 6)


def test_apply_rescores_resorts_and_keeps_empty_slots_last():
    bank = QueryBank(keys=np.array([1, 2, 3]), hubness=np.array([0.9, 0.1, 0.5], np.float32), floor=0.05,
                     newcomer=0.2, k=2, queries=5, embedder={})
    scores = np.array([[0.80, 0.70, 0.65, 0.0], [0.50, 0.40, 0.0, 0.0]], np.float32)
    keys = np.array([[1, 2, 4, -1], [3, 2, -1, -1]])
    out_scores, out_keys = bank.apply(scores, keys, k=3)
    # 1: 0.80 - 0.45 = 0.35; 2: 0.70 - 0.05 = 0.65; 4 (added since the fit: 0.2): 0.65 - 0.10 = 0.55
    assert out_keys.tolist() == [[2, 4, 1], [2, 3, -1]]
    np.testing.assert_allclose(out_scores[0], [0.65, 0.55, 0.35], atol=1e-6)
    np.testing.assert_allclose(out_scores[1, :2], [0.35, 0.25], atol=1e-6)


def test_bank_survives_a_round_trip_and_a_broken_file_is_one_line(tmp_path: Path):
    bank = QueryBank(np.array([4, 9]), np.array([0.3, 0.6], np.float32), 0.1, 0.45, 10, 40, {"kind": "trained"})
    bank.save(tmp_path / BANK_FILE)
    again = QueryBank.load(tmp_path / BANK_FILE)
    assert (again.keys.tolist(), again.hubness.tolist(), again.floor, again.newcomer, again.k, again.queries,
            again.embedder) == ([4, 9], pytest.approx([0.3, 0.6]), pytest.approx(0.1), pytest.approx(0.45), 10, 40,
                                {"kind": "trained"})
    (tmp_path / "broken.npz").write_bytes(b"not a bank")
    with pytest.raises(StoreError, match="unreadable query bank"):
        QueryBank.load(tmp_path / "broken.npz")


@pytest.fixture
def store(tmp_path: Path, catalog_file: Path) -> Store:
    store = Store.create(tmp_path / "store")
    ingest(store, load_products(catalog_file), progress=False)
    vitrine.open(store).sync(progress=False)
    return store


BANK = ["coffee mug", "a mug for tea", "ceramic cup", "blue mug", "hot drink cup", "mug", "tea cup", "red fruit"]


def scores_of(engine, text: str) -> dict[str, float]:
    return {hit.product.id: hit.score for hit in engine.search(text=text, k=4)}


def test_engine_serves_the_corrected_scores_until_the_embedder_changes(store: Store, caplog):
    engine = vitrine.open(store)
    plain = {text: scores_of(engine, text) for text in ("kitchen mug", "warm winter clothes")}
    bank = engine.fit_querybank([Query(text=t) for t in BANK], k=3)
    assert (store.index_dir / BANK_FILE).is_file() and bank.queries == len(BANK)
    vectors = engine.embedder.encode_queries([Query(text=t) for t in BANK])
    keys = {p.id: engine.catalog.key_of(p.id) for p in engine.catalog}
    for text, before in plain.items():
        after = scores_of(vitrine.open(store), text)  # a fresh engine reads the bank from the store
        assert set(after) == set(before)
        for product, score in after.items():
            assert score == pytest.approx(before[product] - 0.5 * bank.hubness_of(np.array([keys[product]]))[0],
                                          abs=1e-5)
        assert list(after.values()) == sorted(after.values(), reverse=True)
    mug_row = vectors @ engine.index.reconstruct(keys["mug"])
    assert bank.hubness_of(np.array([keys["mug"]]))[0] == pytest.approx(np.sort(mug_row)[-3:].mean(), abs=1e-5)
    assert bank.hubness_of(np.array([keys["mug"]]))[0] == bank.hubness.max()  # the bank asked mostly for mugs
    assert vitrine.open(store).describe()["querybank"]["queries"] == len(BANK)

    off = vitrine.open(store, config_overrides={"search.querybank": False})
    assert scores_of(off, "kitchen mug") == pytest.approx(plain["kitchen mug"], abs=1e-6)
    with caplog.at_level(logging.WARNING):
        other = vitrine.open(store, config_overrides={"embedding.image_weight": 0.3})
        other.sync(rebuild=True, progress=False)
        reweighted = scores_of(other, "kitchen mug")
    assert "fitted with another embedder" in caplog.text
    other.config.search.querybank = False
    assert reweighted == pytest.approx(scores_of(other, "kitchen mug"), abs=1e-6)

    engine.upsert([Product("teapot", "Blue Teapot", "A ceramic teapot for tea.")])  # added after the fit
    newcomer = bank.hubness_of(np.array([engine.catalog.key_of("teapot")]))[0]
    assert newcomer == pytest.approx(np.median(bank.hubness))
    engine.config.search.querybank = False
    before = {hit.product.id: hit.score for hit in engine.search(text="kitchen mug", k=5)}
    engine.config.search.querybank = True
    after = {hit.product.id: hit.score for hit in engine.search(text="kitchen mug", k=5)}
    assert after["teapot"] == pytest.approx(before["teapot"] - 0.5 * newcomer, abs=1e-5)


def test_cli_fits_a_bank_from_a_query_log_and_names_a_bad_line(store: Store, tmp_path: Path):
    runner = CliRunner()
    log = write_jsonl(tmp_path / "log.jsonl", [{"text": t} for t in BANK])
    result = runner.invoke(app, ["querybank", str(store.root), str(log), "--k", "2"])
    assert result.exit_code == 0, result.output
    assert f"query bank of {len(BANK)} queries (k = 2)" in result.output
    assert QueryBank.load(store.index_dir / BANK_FILE).k == 2
    result = runner.invoke(app, ["querybank", str(store.root), str(log), "--k", "0"])
    assert result.exit_code == 2 and "querybank k must be at least 1" in result.output
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "mug"}, {"relevant": {"mug": 1}}])
    result = runner.invoke(app, ["querybank", str(store.root), str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:2" in result.output and "a query needs 'text', 'image' or both" in result.output
    assert "Traceback" not in result.output
    assert json.loads(runner.invoke(app, ["info", str(store.root)]).output)["querybank"]["queries"] == len(BANK)
