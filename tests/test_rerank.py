"""The reranker's pure parts and models on drawn data: losses, merge, calibration, chunking, training,
saving, and that reranking is always a permutation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vitrine.config import RerankConfig
from vitrine.rerank import (Calibrator, CandidateList, FeatureSpec, ProductTable, Reranker, chunk_slices,
                            expected_calibration_error, hybrid_merge, merge_chunks, null_loss,
                            pairwise_discordant_loss, sliding_window)
from vitrine.rerank.calibration import reliability_bins, reliability_diagram, softmax
from vitrine.errors import StoreError
from vitrine.rerank.features import RELATIONS
from vitrine.rerank.levels import from_crowdflower, from_grade, grocery_levels, levels_for
from vitrine.rerank.metrics import instance_hit_rate, list_metrics, ndcg_at_k, paired_difference, query_metrics
from vitrine.rerank.reranker import STRATEGIES
from vitrine.rerank.models import ChunkListwiseModel, PointwiseScorer
from vitrine.rerank.train import evaluate_lists, fit_listwise, model_config, train_reranker
from vitrine.catalog import Product


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# --- losses ----------------------------------------------------------------------------------

def test_pairwise_loss_on_hand_checked_cases():
    one_pair = pairwise_discordant_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[0, 2]]))
    assert one_pair.item() == pytest.approx(softplus(-2.0), abs=1e-6)  # weight 2 cancels in the mean
    three = pairwise_discordant_loss(torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[0, 1, 3]]))
    # pairs (0,1) gap 1 margin 1; (0,2) gap 3 margin 0.5; (1,2) gap 2 margin -0.5
    expected = (1 * softplus(-1.0) + 3 * softplus(-0.5) + 2 * softplus(0.5)) / 6
    assert three.item() == pytest.approx(expected, abs=1e-6)
    tau = pairwise_discordant_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0, 3]]), tau=0.5)
    assert tau.item() == pytest.approx(softplus(-2.0), abs=1e-6)


def test_pairwise_loss_ignores_ties_and_padding():
    assert pairwise_discordant_loss(torch.tensor([[3.0, -1.0]]), torch.tensor([[2, 2]])).item() == 0.0
    masked = pairwise_discordant_loss(torch.tensor([[1.0, 0.0, 9.0]]), torch.tensor([[0, 3, 3]]),
                                      torch.tensor([[True, True, False]]))
    assert masked.item() == pytest.approx(softplus(-1.0), abs=1e-6)


def test_null_loss_puts_instances_above_null_and_the_rest_below():
    good = null_loss(torch.tensor([[1.0, -1.0]]), torch.tensor([0.0]), torch.tensor([[0, 3]]))
    assert good.item() == pytest.approx(softplus(-1.0), abs=1e-6)
    bad = null_loss(torch.tensor([[-1.0, 1.0]]), torch.tensor([0.0]), torch.tensor([[0, 1]]))
    assert bad.item() == pytest.approx(softplus(1.0), abs=1e-6)
    masked = null_loss(torch.tensor([[1.0, 5.0]]), torch.tensor([0.0]), torch.tensor([[0, 3]]),
                       torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(softplus(-1.0), abs=1e-6)


# --- merging ---------------------------------------------------------------------------------

def brute_force_merge(local, absolute):
    remaining = [list(np.argsort(-np.asarray(loc), kind="stable")) for loc in local]
    merged = []
    while any(remaining):
        heads = [(absolute[c][items[0]], -c) for c, items in enumerate(remaining) if items]
        _, neg_chunk = max(heads)
        chunk = -neg_chunk
        merged.append((chunk, int(remaining[chunk].pop(0))))
    return merged


def test_hybrid_merge_matches_brute_force_on_random_inputs():
    rng = np.random.default_rng(0)
    for trial in range(200):
        sizes = rng.integers(0, 12, size=rng.integers(1, 7))
        local = [rng.normal(size=n) for n in sizes]
        absolute = [rng.random(size=n) for n in sizes]
        if trial % 2:  # coarse scores: ties in r and in local order, which the merge must break as the heap does
            local, absolute = [np.round(x) for x in local], [np.round(x * 3) / 3 for x in absolute]
        merged = hybrid_merge(local, absolute)
        assert merged == brute_force_merge(local, absolute)
        assert sorted(merged) == [(c, i) for c, n in enumerate(sizes) for i in range(n)]
        for c, loc in enumerate(local):  # each chunk keeps its local order
            picked = [i for chunk, i in merged if chunk == c]
            assert list(np.asarray(loc)[picked]) == sorted(loc, reverse=True)
    assert hybrid_merge([], []) == []


def test_merging_one_lists_chunks_agrees_with_the_merge_of_its_slices():
    rng = np.random.default_rng(1)
    for trial in range(100):
        count, size = int(rng.integers(0, 40)), int(rng.integers(1, 12))
        local, absolute = rng.normal(size=count), rng.random(size=count)
        if trial % 2:
            local, absolute = np.round(local), np.round(absolute * 3) / 3
        parts = chunk_slices(count, size)
        merged = hybrid_merge([local[p] for p in parts], [absolute[p] for p in parts])
        expected = [parts[c].start + i for c, i in merged]
        assert merge_chunks(local, absolute, size).tolist() == expected


def test_chunking_when_k_is_not_a_multiple_of_m():
    assert [(s.start, s.stop) for s in chunk_slices(23, 10)] == [(0, 10), (10, 20), (20, 23)]
    assert chunk_slices(0, 10) == []
    with pytest.raises(ValueError):
        chunk_slices(5, 0)


def test_sliding_window_bubbles_the_best_up_from_the_back():
    relevance = np.zeros(23)
    relevance[22] = 5.0  # the best candidate was retrieved last
    relevance[3] = 4.0
    calls = []

    def score(positions):
        calls.append(len(positions))
        return relevance[positions]

    order = sliding_window(23, score, window=10, stride=5)
    assert sorted(order.tolist()) == list(range(23))
    assert order[:2].tolist() == [22, 3]
    assert calls == [10, 10, 10, 10]  # windows at 13, 8, 3, 0: one after another


# --- calibration -----------------------------------------------------------------------------

def overconfident(n: int = 4000, seed: int = 0):
    """Logits whose softmax is far too sure of itself: the true model is the logits divided by 4."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, 4)) * 1.5
    levels = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    return true_logits * 4.0, levels


@pytest.mark.parametrize("kind", ["platt", "temperature", "isotonic"])
def test_calibration_reduces_ece(kind: str, tmp_path: Path):
    logits, levels = overconfident()
    fit_logits, fit_levels = overconfident(seed=1)
    raw = softmax(logits)[:, 0]
    calibrator = Calibrator.fit(kind, fit_logits, fit_levels)
    calibrated = calibrator(logits)
    before = expected_calibration_error(raw, levels == 0)
    after = expected_calibration_error(calibrated, levels == 0)
    assert before > 0.08 and after < before / 2
    if kind == "temperature":
        assert calibrator.temperature == pytest.approx(4.0, rel=0.15)
    path = reliability_diagram({"raw": (raw, levels == 0), kind: (calibrated, levels == 0)}, tmp_path / "r.png")
    assert path.stat().st_size > 1000


def test_reliability_bins_are_the_diagrams_points_and_weigh_up_to_the_ece():
    r = np.array([0.05, 0.05, 0.15, 0.95, 0.97, 1.0])
    hit = np.array([0, 1, 0, 1, 1, 0], dtype=bool)
    bins = reliability_bins(r, hit)
    assert [(b["low"], b["count"]) for b in bins] == [(0.0, 2), (pytest.approx(0.1), 1), (pytest.approx(0.9), 3)]
    assert [b["observed"] for b in bins] == pytest.approx([0.5, 0.0, 2 / 3])
    assert bins[2]["mean"] == pytest.approx((0.95 + 0.97 + 1.0) / 3)  # r = 1 falls in the last bin, not an 11th
    ece = sum(b["count"] * abs(b["observed"] - b["mean"]) for b in bins) / len(r)
    assert ece == pytest.approx(expected_calibration_error(r, hit))


def test_platt_removes_a_bias_temperature_cannot():
    """A model that under-predicts instance matches (level 0's logit 1.5 too low): one temperature over all
    four levels cannot move r's mean; Platt scaling of r's log-odds can, and keeps r's order."""
    rng = np.random.default_rng(5)
    true_logits = rng.normal(size=(6000, 4)) * 1.5
    levels = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    logits = true_logits - np.array([1.5, 0.0, 0.0, 0.0])
    fit, test = slice(0, 3000), slice(3000, None)
    matches = levels[test] == 0
    errors = {kind: expected_calibration_error(Calibrator.fit(kind, logits[fit], levels[fit])(logits[test]), matches)
              for kind in ("none", "temperature", "platt")}
    assert errors["none"] > 0.1 and errors["temperature"] > 0.05
    assert errors["platt"] < 0.03 and errors["platt"] < errors["temperature"] / 3
    platt = Calibrator.fit("platt", logits[fit], levels[fit])
    assert platt.bias == pytest.approx(1.5, abs=0.25) and platt.slope == pytest.approx(1.0, abs=0.15)
    raw, calibrated = softmax(logits[test])[:, 0], platt(logits[test])
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(calibrated, kind="stable"))
    assert Calibrator(**platt.to_dict())(logits[test]) == pytest.approx(calibrated)


def test_query_history_evidence_matches_a_loop_over_candidates():
    from vitrine.rerank.history import NO_HISTORY, QueryHistory

    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys, sources = rng.integers(0, 40, size=300), [f"q{i}" for i in rng.integers(0, 120, size=300)]
    history = QueryHistory(vectors, keys, sources)
    query = rng.normal(size=8).astype(np.float32)
    query /= np.linalg.norm(query)
    many = np.concatenate([rng.integers(-5, 50, size=60), [int(keys[0])] * 2])  # unknown keys, repeats
    few = np.array([int(keys[0]), -3, int(keys[0]), int(keys[1])])  # a sliver of the rows: the gathering path
    assert 3 * np.isin(keys, few).sum() < len(keys) <= 3 * np.isin(keys, many).sum()
    for candidates in (many, few):
        for exclude in (None, sources[0], "nobody"):
            best, count = history.evidence(query, candidates, exclude)
            for key, b, c in zip(candidates, best, count):
                rows = [i for i in range(300) if keys[i] == key and sources[i] != exclude]
                assert c == len(rows)
                # float16 rows: cosines good to about three decimals
                assert b == pytest.approx(max(vectors[rows] @ query) if rows else NO_HISTORY, abs=1e-3)
    best, count = history.evidence(query, [])
    assert best.shape == count.shape == (0,)
    best, count = history.evidence(query, [-1, 99])  # no history at all
    assert best.tolist() == [NO_HISTORY] * 2 and count.tolist() == [0, 0]


def test_ece_of_a_perfect_predictor_is_small():
    rng = np.random.default_rng(3)
    p = rng.random(20000)
    assert expected_calibration_error(p, rng.random(20000) < p) < 0.02


def test_ece_interval_resamples_whole_queries_and_chance_ece_shrinks_with_the_split():
    from vitrine.rerank.calibration import chance_ece, ece_interval

    rng = np.random.default_rng(8)

    def queries(count: int, shift: float):
        """50 candidates a query; each query's true match rate is r moved by its own offset (hard and easy
        queries), so candidates of one query are not independent draws."""
        p = [rng.random(50) for _ in range(count)]
        y = [rng.random(50) < np.clip(q + rng.normal(0, shift), 0, 1) for q in p]
        return p, y

    few, many = queries(30, 0.2), queries(480, 0.2)
    point, low, high = ece_interval(*few)
    assert point == pytest.approx(expected_calibration_error(np.concatenate(few[0]), np.concatenate(few[1])))
    assert low < point < high
    _, low_many, high_many = ece_interval(*many)
    assert high_many - low_many < (high - low) / 2  # 16 times the queries: about a quarter of the width
    # Per-query offsets are miscalibration a bigger split does not average away; independent draws do.
    assert ece_interval(*queries(480, 0.0))[0] < ece_interval(*many)[0]
    floor_few, floor_many = chance_ece(np.concatenate(few[0])), chance_ece(np.concatenate(many[0]))
    assert floor_many < floor_few / 2 and floor_many < 0.01
    assert ece_interval([np.array([0.2, 0.9])], [np.array([False, True])]) == (pytest.approx(0.15),) * 3


# --- levels and metrics ----------------------------------------------------------------------

def test_query_history_evidence_by_hand(tmp_path: Path):
    from vitrine.rerank.history import NO_HISTORY, QueryHistory

    e = np.eye(3, dtype=np.float32)
    history = QueryHistory(np.stack([e[0], e[1], (e[0] + e[1]) / np.sqrt(2)]), np.array([7, 7, 9]), ["a", "b", "c"])
    query = np.array([0.6, 0.8, 0.0], dtype=np.float32)
    best, count = history.evidence(query, [7, 9, 4])
    np.testing.assert_allclose(best, [0.8, 1.4 / np.sqrt(2), NO_HISTORY], atol=1e-3)  # float16 rows
    np.testing.assert_array_equal(count, [2, 1, 0])
    best, count = history.evidence(query, [7, 9], exclude="b")  # query b never meets itself
    np.testing.assert_allclose(best, [0.6, 1.4 / np.sqrt(2)], atol=1e-3)
    np.testing.assert_array_equal(count, [1, 1])
    best, count = history.evidence(query, [9, 99, 7], exclude="c")  # 9's only past query is the query itself
    np.testing.assert_allclose(best, [NO_HISTORY, NO_HISTORY, 0.8], atol=1e-3)
    np.testing.assert_array_equal(count, [0, 0, 2])
    best, count = history.evidence(query, [7, 9], exclude=["a", "b", "unknown"])  # several queries left out
    np.testing.assert_allclose(best, [NO_HISTORY, 1.4 / np.sqrt(2)], atol=1e-3)
    np.testing.assert_array_equal(count, [0, 1])
    history.save(tmp_path)
    loaded = QueryHistory.load(tmp_path)
    np.testing.assert_array_equal(loaded.evidence(query, [7, 9])[0], history.evidence(query, [7, 9])[0])
    assert loaded.sources == ["a", "b", "c"]
    assert QueryHistory.load(tmp_path / "none") is None


def test_history_count_feature_does_not_grow_with_the_history():
    """Fold lists are built with part of the training queries as history, served lists with all of them:
    a product searched for twice as often as the average must read the same either way."""
    from vitrine.rerank.features import FeatureBuilder
    from vitrine.rerank.history import QueryHistory

    rng = np.random.default_rng(5)
    table = ProductTable(np.arange(3), np.zeros(3), *rng.normal(size=(3, 3, DIM)).astype(np.float32),
                         np.ones(3, bool), ["a", "b", "c"], ["a", "b", "c"], [[], [], []])
    keys = np.array([0, 0, 0, 0, 1, 1] * 3)  # product 0 found by twice as many past queries as product 1
    vectors = rng.normal(size=(len(keys), DIM)).astype(np.float32)
    full = QueryHistory(vectors, keys, [f"q{i}" for i in range(len(keys))])
    third = QueryHistory(vectors[:6], keys[:6], full.sources[:6])
    column = FeatureSpec(DIM).column("history_count_rel")
    query = rng.normal(size=DIM).astype(np.float32)
    read = [FeatureBuilder(table, history=h).build(query, None, True, [0, 1, 2], [0.9, 0.5, 0.1]).items[:, column]
            for h in (full, third)]
    np.testing.assert_allclose(read[0], read[1])
    assert read[0][0] > read[0][1] > read[0][2] == 0.0


def test_cross_fit_folds_keep_look_alike_queries_of_a_product_together():
    from vitrine.embedding import Query
    from vitrine.rerank.train import LabelledList, cross_fit_folds

    rng = np.random.default_rng(0)
    queries, vectors, burst = [], [], []
    for product in range(6):
        for b in range(2):  # two bursts of near-copies per product, far apart
            centre = rng.normal(size=16)
            for i in range(3 + b):
                queries.append(LabelledList(Query(text=f"p{product} b{b} {i}"), {f"p{product}": 0}, f"q{len(queries)}"))
                vectors.append(centre + rng.normal(scale=0.01, size=16))
                burst.append((product, b))
    queries.append(LabelledList(Query(text="many"), {"p0": 0, "p1": 0}, "loose"))  # no single instance: random
    vectors.append(rng.normal(size=16))
    folds = cross_fit_folds(queries, np.array(vectors, dtype=np.float32), folds=2)
    assert set(folds.tolist()) == {0, 1}
    for product in range(6):
        first = {folds[i] for i, key in enumerate(burst) if key == (product, 0)}
        second = {folds[i] for i, key in enumerate(burst) if key == (product, 1)}
        assert len(first) == 1 and len(second) == 1 and first != second  # each burst whole, one per fold
    assert abs(int((folds == 0).sum()) - int((folds == 1).sum())) <= 6  # the larger burst goes to the emptier fold


def test_cross_fit_folds_hold_the_catalogs_share_of_new_products_out_whole():
    from vitrine.embedding import Query
    from vitrine.rerank.train import LabelledList, cross_fit_folds, unseen_share, whole_products

    rng = np.random.default_rng(1)
    queries, vectors = [], []
    for product in range(8):  # 8 products with queries in a catalog of 12: a third have none
        for _ in range(6):
            queries.append(LabelledList(Query(text=f"p{product}"), {f"p{product}": 0, "other": 3}, f"q{len(queries)}"))
            vectors.append(rng.normal(size=8))
    vectors = np.array(vectors, dtype=np.float32)
    share = unseen_share(queries, 12)
    assert share == pytest.approx(1 / 3) and unseen_share(queries, 8) == 0.0 and unseen_share(queries, 0) == 0.0
    product_of = np.array([int(q.query.text[1:]) for q in queries])

    def folds_per_product(whole: float, seed: int) -> list[int]:
        folds = cross_fit_folds(queries, vectors, folds=3, seed=seed, whole=whole)
        return [len(set(folds[product_of == p].tolist())) for p in range(8)]

    for seed in range(3):
        spread = folds_per_product(share, seed)
        assert sorted(spread) == [1] * round(share * 8) + [3] * (8 - round(share * 8))  # 3 of 8 whole, the rest split
        kept = whole_products(queries, share, seed)  # the same products, for lists built without folds
        assert {int(p[1:]) for p in kept} == {p for p in range(8) if spread[p] == 1}
        assert all(sorted(rows) == np.flatnonzero(product_of == int(p[1:])).tolist() for p, rows in kept.items())
        assert folds_per_product(0.0, seed) == [3] * 8
    assert np.array_equal(cross_fit_folds(queries, vectors, 3, 0), cross_fit_folds(queries, vectors, 3, 0, 0.0))


def test_levels_mappings():
    assert [from_crowdflower(r) for r in (4, 3, 2, 1)] == [0, 1, 2, 3]
    assert [from_grade(g) for g in (3, 2, 1, 0)] == [0, 1, 2, 3]

    def product(pid, coarse, category):
        return Product(pid, pid, attributes={"coarse_class": coarse, "category": category})

    catalog = [product("granny", "Apple", "Fruit"), product("pink", "Apple", "Fruit"),
               product("banana", "Banana", "Fruit"), product("oatly", "Oat Milk", "Packages")]
    assert grocery_levels(catalog[0], catalog) == {"granny": 0, "pink": 1, "banana": 2, "oatly": 3}
    by_id = {p.id: p for p in catalog}
    assert levels_for("grocery-seen", {"pink": 1}, by_id)["granny"] == 1
    assert levels_for("shopee", {"a": 1}, by_id) == {"a": 0}
    assert levels_for("crowdflower", {"a": 3, "b": 0}, by_id) == {"a": 0, "b": 3}


def test_level_metrics():
    assert instance_hit_rate([0, 3, 3], 1, 50) == 1.0
    assert instance_hit_rate([3, 0, 0], 2, 50) == 0.5  # top min(K, G) = 2
    assert instance_hit_rate([3, 3], 0, 50) is None
    assert ndcg_at_k([0, 1], [3, 2]) == pytest.approx(1.0)
    assert ndcg_at_k([1, 0], [3, 2]) < 1.0


def test_per_query_level_metrics_mark_what_does_not_apply():
    per_query = query_metrics([[3, 0], [1, 3], [3, 3]], [np.array([3.0]), np.array([2.0]), np.array([])], 50)
    assert per_query["instance_hit_rate"][0] == 0.0 and np.isnan(per_query["instance_hit_rate"][1:]).all()
    assert per_query["concept_hit_rate@1"][:2].tolist() == [0.0, 1.0] and np.isnan(per_query["concept_hit_rate@1"][2])
    assert per_query["ndcg@10"][1] == pytest.approx(1.0) and per_query["ndcg@10"][2] == 0.0
    means = list_metrics([[3, 0], [1, 3], [3, 3]], [np.array([3.0]), np.array([2.0]), np.array([])], 50)
    assert means["instance_hit_rate"] == 0.0 and means["concept_hit_rate@1"] == 0.5
    assert means["ndcg@10"] == pytest.approx(per_query["ndcg@10"].mean())


def test_paired_difference_interval_separates_a_real_gain_from_a_tie():
    rng = np.random.default_rng(3)
    base = rng.random(400)
    better = base + 0.05 + rng.normal(0, 0.05, 400)
    mean, low, high = paired_difference(better, base)
    assert mean == pytest.approx(np.mean(better - base)) and 0 < low < mean < high
    tie = base + rng.normal(0, 0.05, 400)
    _, low, high = paired_difference(tie, base)
    assert low < 0 < high
    # Queries a metric does not apply to (NaN) are left out; identical rankers differ by exactly 0.
    assert paired_difference(np.array([1.0, np.nan, 0.0]), np.array([1.0, 0.0, 0.0])) == (0.0, 0.0, 0.0)


# --- models on drawn lists -------------------------------------------------------------------

DIM = 8


def drawn_lists(count: int, k: int, seed: int = 0) -> list[CandidateList]:
    """Lists where a candidate's level shows, noisily, in its features, and best in how it compares
    with the others (the instance match is the one closest to the query)."""
    spec = FeatureSpec(DIM)
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(count):
        levels = rng.choice(4, size=k, p=[0.05, 0.15, 0.3, 0.5])
        levels[rng.integers(k)] = 0
        query = np.concatenate([rng.normal(size=DIM), [1.0, 0.0]]).astype(np.float32)
        items = rng.normal(size=(k, spec.item_dim)).astype(np.float32)
        items[:, 2 * DIM + 3] = -levels + rng.normal(scale=0.8, size=k)  # the "cosine" column
        retrieval = np.sort(rng.random(k))[::-1].astype(np.float32)
        items[:, spec.column("retrieval_z")] = (retrieval - retrieval.mean()) / (retrieval.std() + 1e-6)
        ideal = np.sort(3.0 - levels[levels < 3])[::-1].astype(np.float32)
        lists.append(CandidateList(np.arange(100, 100 + k), query, items, retrieval, levels.astype(np.int64), ideal))
    return lists


def small_config(**changes) -> RerankConfig:
    config = RerankConfig(epochs=6, batch_size=16, dim=16, layers=1, heads=2, patience=10)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_training_lowers_the_loss_and_beats_retrieval_order():
    """Drawn retrieval scores carry nothing here: training must overrule the retrieval prior."""
    train, dev = drawn_lists(48, 23), drawn_lists(16, 23, seed=1)
    model, report = fit_listwise(train, dev, FeatureSpec(DIM), small_config(epochs=12))
    assert report.losses[-1] < report.losses[0] * 0.9
    reranker = Reranker(FeatureSpec(DIM), model)
    assert evaluate_lists(reranker, dev, "listwise")["ndcg@10"] > evaluate_lists(reranker, dev, "retrieval")["ndcg@10"] + 0.1


def test_calibration_reports_what_r_reads_on_queries_the_calibrator_has_not_seen():
    """Isotonic regression fitted on the dev lists all but matches them (its dev ECE is near 0), so that figure
    says little about new queries; each half calibrated by the other half's fit says more, and is larger."""
    from vitrine.rerank.train import calibrate

    train, dev = drawn_lists(48, 23), drawn_lists(12, 23, seed=1)
    model, _ = fit_listwise(train, [], FeatureSpec(DIM), small_config(epochs=4))
    reranker = Reranker(FeatureSpec(DIM), model)
    report = calibrate(reranker, dev, "isotonic")
    low, high = report["dev_ece_held_out_95%"]
    assert report["dev_ece_calibrated"] < 0.01 and report["dev_ece_held_out"] > 0.03
    assert low < report["dev_ece_held_out"] < high
    assert "dev_ece_held_out" not in calibrate(reranker, dev[:3], "isotonic")  # too few queries to halve


def test_untrained_models_with_a_retrieval_prior_rank_as_the_retriever():
    spec = FeatureSpec(DIM)
    torch.manual_seed(3)
    config = model_config(spec, small_config())
    reranker = Reranker(spec, ChunkListwiseModel(config).eval(), PointwiseScorer(config).eval())
    lists = drawn_lists(6, 23, seed=7) + drawn_lists(2, 4, seed=8)
    for strategy in sorted(STRATEGIES):
        for found, ordering in zip(lists, reranker.rank_lists(lists, strategy)):
            assert ordering.order.tolist() == list(range(len(found))), strategy
    # Without the prior the same seed gives some other order: the prior is what makes it the retriever's.
    plain = model_config(spec, small_config(retrieval_prior=False))
    unprimed = Reranker(spec, ChunkListwiseModel(plain).eval())
    assert any(o.order.tolist() != list(range(len(f))) for f, o in zip(lists, unprimed.rank_lists(lists, "hybrid")))


def test_training_falls_back_to_the_retrievers_order_when_dev_prefers_it():
    """Dev lists the retriever already ranks perfectly: no epoch can beat epoch 0, so epoch 0 is kept."""
    train = drawn_lists(32, 23)
    dev = drawn_lists(12, 23, seed=9)
    for found in dev:
        found.levels = np.sort(found.levels)
    model, report = fit_listwise(train, dev, FeatureSpec(DIM), small_config(epochs=3))
    assert report.best_epoch == 0 and len(report.dev_scores) == 4
    assert report.dev_scores[0] == pytest.approx(1.0)
    for ordering in Reranker(FeatureSpec(DIM), model).rank_lists(dev, "hybrid"):
        assert ordering.order.tolist() == list(range(23))


def test_auto_strategy_is_the_best_on_the_held_back_queries():
    reranker, report = train_reranker(drawn_lists(30, 23), drawn_lists(10, 23, seed=1),
                                      small_config(epochs=2, strategy="auto"))
    scores = report["dev_ndcg@10"]
    assert set(scores) == {"retrieval", "pointwise", "listwise", "hybrid"}
    assert reranker.settings.strategy == report["strategy"] == max(("pointwise", "listwise", "hybrid"), key=scores.get)


@pytest.fixture(scope="module")
def trained() -> Reranker:
    reranker, _ = train_reranker(drawn_lists(30, 23), drawn_lists(10, 23, seed=1), small_config(epochs=2))
    return reranker


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_reranking_never_drops_or_duplicates(trained: Reranker, strategy: str):
    lists = drawn_lists(5, 23, seed=2) + drawn_lists(2, 7, seed=3) + drawn_lists(1, 1, seed=4)
    for found, ordering in zip(lists, trained.rank_lists(lists, strategy)):
        assert sorted(ordering.order.tolist()) == list(range(len(found)))
        assert len(ordering.scores) == len(found)


def test_chunks_run_as_one_batch_and_match_one_by_one(trained: Reranker):
    lists = drawn_lists(3, 23, seed=5)
    together = trained.chunk_scores(lists)
    alone = [trained.chunk_scores([found])[0] for found in lists]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a["local"], b["local"], atol=1e-5)
        np.testing.assert_allclose(a["r"], b["r"], atol=1e-5)
        assert len(a["null"]) == 3  # 23 candidates in chunks of 10: 10, 10, 3


def test_save_then_load_gives_identical_scores(trained: Reranker, tmp_path: Path):
    trained.save(tmp_path / "rerank")
    loaded = Reranker.load(tmp_path / "rerank")
    lists = drawn_lists(4, 23, seed=6)
    for strategy in ("hybrid", "pointwise", "listwise"):
        for a, b in zip(trained.rank_lists(lists, strategy), loaded.rank_lists(lists, strategy)):
            np.testing.assert_array_equal(a.order, b.order)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    assert loaded.calibrator == trained.calibrator


def test_a_reranker_refuses_features_it_was_not_trained_on(trained: Reranker):
    from vitrine.errors import VitrineError
    from vitrine.rerank.features import SCALARS

    older = Reranker(FeatureSpec(DIM, SCALARS[:-3]), trained.listwise)
    table = ProductTable(np.arange(2), np.zeros(2), *(np.zeros((2, DIM), np.float32),) * 3, np.ones(2, bool),
                         ["a", "b"], ["a", "b"], [[], []])
    with pytest.raises(VitrineError, match="trained on other features"):
        older.bind(older.builder(table))
    assert trained.bind(trained.builder(table)).features.table is table


def test_product_table_keeps_its_kinds_of_vector_in_one_array(tmp_path: Path):
    from vitrine.rerank.features import stacked_kinds

    rng = np.random.default_rng(9)
    separate = [rng.normal(size=(5, DIM)).astype(np.float32) for _ in RELATIONS]
    table = ProductTable(np.arange(5), np.zeros(5), *separate, np.ones(5, bool), list("abcde"), list("abcde"), [[]] * 5)
    assert table.kinds.shape == (len(RELATIONS), 5, DIM)
    for kind, vectors in zip(RELATIONS, separate):
        np.testing.assert_array_equal(getattr(table, kind), vectors)
        assert np.shares_memory(getattr(table, kind), table.kinds)
    views = stacked_kinds(5, DIM)
    for kind, vectors in zip(RELATIONS, separate):
        views[kind][:] = vectors
    built = ProductTable(np.arange(5), np.zeros(5), views["fused"], views["text"], views["image"], np.ones(5, bool),
                         list("abcde"), list("abcde"), [[]] * 5)
    assert np.shares_memory(built.kinds, views["fused"])  # handed in as one array: kept, not copied
    table.save(tmp_path / "table.npz")
    loaded = ProductTable.load(tmp_path / "table.npz")
    np.testing.assert_array_equal(loaded.kinds, table.kinds)
    assert all(np.shares_memory(getattr(loaded, kind), loaded.kinds) for kind in RELATIONS)


def test_scalar_only_features_are_the_scalars_of_the_full_layout(tmp_path: Path):
    from vitrine.rerank.features import SCALARS, FeatureBuilder

    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(3, 3, DIM)).astype(np.float32)
    table = ProductTable(np.arange(3), np.zeros(3), *vectors, np.ones(3, bool), ["a", "b", "c"], ["a", "b", "c"],
                         [[], [], []])
    query = rng.normal(size=DIM).astype(np.float32)
    full = FeatureBuilder(table).build(query, None, True, [2, 0, 1], [0.9, 0.5, 0.1])
    scalars = FeatureBuilder(table, vectors=False).build(query, None, True, [2, 0, 1], [0.9, 0.5, 0.1])
    assert scalars.items.shape == (3, len(SCALARS)) and scalars.query.tolist() == [0.0, 1.0]
    np.testing.assert_array_equal(scalars.items, full.items[:, 2 * DIM:])
    assert scalars.spec.column("retrieval_z") == SCALARS.index("retrieval_z")
    assert scalars.similarity.shape == (3, 3, len(RELATIONS))
    for channel, kind in enumerate(vectors):  # fused, text, image: the candidates' vectors in the list's order
        listed = kind[[2, 0, 1]]
        np.testing.assert_allclose(scalars.similarity[..., channel], listed @ listed.T, rtol=1e-5)
    unrelated = FeatureBuilder(table).build(query, None, True, [2, 0, 1], [0.9, 0.5, 0.1], relations="none")
    assert unrelated.similarity is None and unrelated.relation_vectors is None  # pointwise serving never reads them
    np.testing.assert_array_equal(unrelated.items, full.items)
    served = FeatureBuilder(table).build(query, None, True, [2, 0, 1], [0.9, 0.5, 0.1], relations="vectors")
    np.testing.assert_array_equal(served.relation_vectors, vectors[:, [2, 0, 1]])
    assert served.similarity is None
    with pytest.raises(ValueError, match="relations must be one of"):
        FeatureBuilder(table).build(query, None, True, [2, 0, 1], [0.9, 0.5, 0.1], relations="all")

    # A scalar-only reranker saves, loads and binds as one, and refuses a builder with vector inputs.
    model = ChunkListwiseModel(model_config(scalars.spec, small_config())).eval()
    Reranker(scalars.spec, model).save(tmp_path / "scalars")
    loaded = Reranker.load(tmp_path / "scalars")
    assert loaded.spec == scalars.spec
    assert loaded.bind(loaded.builder(table)).features.spec.vectors is False
    from vitrine.errors import VitrineError

    with pytest.raises(VitrineError, match="trained on other features"):
        loaded.bind(FeatureBuilder(table))


def test_held_back_queries_are_whole_look_alike_clusters():
    from vitrine.embedding import Query
    from vitrine.rerank.train import LabelledList, held_back

    rng = np.random.default_rng(1)
    queries, vectors, burst = [], [], []
    for product in range(4):
        for b in range(7):
            centre = rng.normal(size=8)
            for i in range(3):
                queries.append(LabelledList(Query(text=f"{product} {b} {i}"), {str(product): 0}, f"q{len(queries)}"))
                vectors.append(centre + rng.normal(scale=0.01, size=8))
                burst.append((product, b))
    train, dev = held_back(queries, np.array(vectors, dtype=np.float32), 0.15, seed=0)
    assert sorted(train + dev) == list(range(len(queries)))
    assert len(dev) == 12  # one burst of 3 per product: 1/7 of the queries
    held = {burst[i] for i in dev}
    assert all(burst[i] not in held for i in train)  # no near-copy of a held-back query stays in training
    assert {product for product, _ in held} == {0, 1, 2, 3}


def test_onnx_runtime_ranks_as_pytorch_does(trained: Reranker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VITRINE_CACHE_DIR", str(tmp_path))
    served = Reranker(trained.spec, trained.listwise, trained.pointwise, trained.calibrator,
                      trained.settings).serve_with("onnx", threads=1)
    assert {type(runner).__name__ for runner in served.runners.values()} == {"OnnxChunkModel", "OnnxPointwise"}
    assert list((tmp_path / "onnx").glob("rerank-*.onnx"))
    lists = drawn_lists(4, 23, seed=11) + drawn_lists(1, 4, seed=12)
    for strategy in sorted(STRATEGIES):
        for a, b in zip(trained.rank_lists(lists, strategy), served.rank_lists(lists, strategy)):
            np.testing.assert_array_equal(a.order, b.order)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    assert served.serve_with("torch").runners == {}


def test_unknown_strategy_is_a_user_error(trained: Reranker):
    from vitrine.errors import VitrineError

    with pytest.raises(VitrineError, match="unknown rerank strategy 'best'"):
        trained.rank_lists(drawn_lists(1, 5), "best")


# --- relational attention --------------------------------------------------------------------

def random_cosines(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, count)`` cosines of random unit vectors (symmetric, 1 on the diagonal)."""
    vectors = rng.normal(size=(count, 4))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors @ vectors.T).astype(np.float32)


def with_similarity(lists: list[CandidateList], seed: int) -> list[CandidateList]:
    """The lists with random candidate-candidate cosines, another draw for each kind of vector."""
    rng = np.random.default_rng(seed)
    for found in lists:
        found.similarity = np.stack([random_cosines(rng, len(found)) for _ in RELATIONS], axis=-1)
    return lists


def test_stacked_chunks_carry_each_chunks_block_of_the_similarity():
    from vitrine.rerank.reranker import stack_lists

    found, short = with_similarity(drawn_lists(1, 23, seed=1) + drawn_lists(1, 7, seed=2), seed=5)
    query, items, mask, similarity, vectors = stack_lists([found, short], 10)
    assert vectors is None
    assert query.shape[0] == items.shape[0] == 4  # chunks of 10, 10, 3, then the short list's 7
    for row, (owner, part) in enumerate([(found, p) for p in chunk_slices(23, 10)] + [(short, slice(0, 7))]):
        width = part.stop - part.start
        np.testing.assert_array_equal(similarity[row, :width, :width].numpy(), owner.similarity[part, part])
        np.testing.assert_array_equal(items[row, :width].numpy(), owner.items[part])
        np.testing.assert_array_equal(query[row].numpy(), owner.query)
        assert mask[row].tolist() == [True] * width + [False] * (10 - width)
    assert similarity[2, 3:].abs().sum() == 0 and similarity[2, :, 3:].abs().sum() == 0  # padding relates to nothing
    assert items[3, 7:].abs().sum() == 0
    # Lists that carry their candidates' vectors stack them chunk by chunk, (chunks, kinds, M, D).
    rng = np.random.default_rng(3)
    found.relation_vectors, short.relation_vectors = (rng.normal(size=(len(RELATIONS), n, 4)).astype(np.float32)
                                                      for n in (23, 7))
    *_, similarity, vectors = stack_lists([found, short], 10)
    assert similarity is None and vectors.shape == (4, len(RELATIONS), 10, 4)
    for row, (owner, part) in enumerate([(found, p) for p in chunk_slices(23, 10)] + [(short, slice(0, 7))]):
        width = part.stop - part.start
        np.testing.assert_array_equal(vectors[row, :, :width].numpy(), owner.relation_vectors[:, part])
        assert vectors[row, :, width:].abs().sum() == 0
    *_, whole = stack_lists([found], 23)  # a list that fills its chunks exactly needs no padding
    np.testing.assert_array_equal(whole[0].numpy(), found.relation_vectors)
    found.relation_vectors = None
    with pytest.raises(ValueError, match="build them alike"):
        stack_lists([found, short], 10)


def relational_pair(seed: int = 0) -> tuple[ChunkListwiseModel, ChunkListwiseModel]:
    """A relational chunk model and a plain one with the same weights."""
    spec = FeatureSpec(DIM)
    torch.manual_seed(seed)
    relational = ChunkListwiseModel(model_config(spec, small_config(relational=True, retrieval_prior=False))).eval()
    plain = ChunkListwiseModel(model_config(spec, small_config(retrieval_prior=False, relational=False))).eval()
    plain.load_state_dict({k: v for k, v in relational.state_dict().items() if k != "relation"})
    return relational, plain


def test_relational_attention_starts_plain_and_then_reads_how_candidates_relate():
    from vitrine.rerank.reranker import stack_lists

    relational, plain = relational_pair()
    lists = with_similarity(drawn_lists(3, 23, seed=6), seed=7)
    inputs = stack_lists(lists, 10)[:4]
    with torch.no_grad():
        # The relation weights start at zero: the model is the plain one until training moves them.
        torch.testing.assert_close(relational(*inputs).local, plain(*inputs).local)
        relational.relation.fill_(0.4)
        moved = relational(*inputs).local
        other = relational(*inputs[:3], torch.flip(inputs[3], dims=[1, 2])).local
        assert not torch.allclose(moved, plain(*inputs).local)
        assert not torch.allclose(moved, other)  # another similarity, other scores
        torch.testing.assert_close(plain(*inputs).local, plain(*inputs[:3], torch.flip(inputs[3], dims=[1, 2])).local)
        # Shuffling the candidates of a chunk (with their rows and columns of the similarity) shuffles the scores.
        query, items, mask, similarity = (t[:1] for t in inputs)
        order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
        shuffled = relational(query, items[:, order], mask[:, order], similarity[:, order][:, :, order]).local
        torch.testing.assert_close(shuffled, relational(query, items, mask, similarity).local[:, order])
        # Each kind of cosine has its own multiples: a model that weighs only the text cosines ignores the others.
        relational.relation.zero_()
        relational.relation[..., RELATIONS.index("text")] = 0.4
        text_only = relational(*inputs).local
        others = inputs[3].clone()
        others[..., RELATIONS.index("image")] = torch.flip(others[..., RELATIONS.index("image")], dims=[1, 2])
        torch.testing.assert_close(relational(*inputs[:3], others).local, text_only)
        others[..., RELATIONS.index("text")] = torch.flip(others[..., RELATIONS.index("text")], dims=[1, 2])
        assert not torch.allclose(relational(*inputs[:3], others).local, text_only)


def test_relational_training_learns_from_look_alike_candidates():
    """Lists whose per-candidate features are noise: the relevant candidates are the ones whose images
    look alike (a tight cluster; the other kinds of cosine are noise), so only a model that reads that
    kind of similarity can find them."""
    rng = np.random.default_rng(8)

    def lists(count: int) -> list[CandidateList]:
        made = drawn_lists(count, 20, seed=int(rng.integers(1 << 30)))
        for found in made:
            found.items[:, 2 * DIM + 3] = rng.normal(size=len(found))  # the level no longer shows in a feature
            relevant = found.levels < 2
            vectors = rng.normal(size=(len(found), 6))
            vectors[relevant] = rng.normal(size=6) + 0.15 * rng.normal(size=(int(relevant.sum()), 6))
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            found.similarity = np.stack([random_cosines(rng, len(found)) for _ in RELATIONS], axis=-1)
            found.similarity[..., RELATIONS.index("image")] = vectors @ vectors.T
        return made

    train, dev = lists(200), lists(30)
    scores = {}
    for relational in (False, True):
        config = small_config(epochs=15, relational=relational, retrieval_prior=False, dim=32, layers=2, heads=4)
        model, _ = fit_listwise(train, dev, FeatureSpec(DIM), config)
        scores[relational] = evaluate_lists(Reranker(FeatureSpec(DIM), model), dev, "listwise")["ndcg@10"]
    assert scores[True] > scores[False] + 0.15, scores


def test_a_reranker_saved_with_one_kind_of_cosine_asks_to_be_trained_again(tmp_path: Path):
    from safetensors.torch import load_file, save_file

    relational, _ = relational_pair(seed=3)
    Reranker(FeatureSpec(DIM), relational).save(tmp_path / "old")
    weights = load_file(str(tmp_path / "old" / "listwise.safetensors"))
    weights["relation"] = weights["relation"][..., 0].contiguous()  # the layout before RELATIONS: (layers, heads)
    save_file(weights, str(tmp_path / "old" / "listwise.safetensors"))
    with pytest.raises(StoreError, match="cannot load the reranker.*train one") as caught:
        Reranker.load(tmp_path / "old")
    assert "\n" not in str(caught.value)


def test_onnx_runtime_runs_a_relational_model_as_pytorch_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VITRINE_CACHE_DIR", str(tmp_path))
    relational, _ = relational_pair(seed=2)
    with torch.no_grad():
        relational.relation.copy_(torch.randn(relational.relation.shape) * 0.3)
    from vitrine.rerank.reranker import stack_lists

    reranker = Reranker(FeatureSpec(DIM), relational)
    served = Reranker(FeatureSpec(DIM), relational).serve_with("onnx", threads=1)
    assert type(served.runners["listwise"]).__name__ == "OnnxChunkModel"
    builder, queries = served_lists_builder(seed=13)
    as_served = [builder.build(query, None, True, keys, scores, relations="vectors") for query, keys, scores in queries]
    with_cosines = [builder.build(query, None, True, keys, scores) for query, keys, scores in queries]
    assert all(found.relation_vectors is not None for found in as_served)
    with torch.no_grad():  # the graph itself computes the cosines the model would be given
        direct = served.runners["listwise"](*stack_lists(as_served, 10))
        given = relational(*stack_lists(with_cosines, 10)[:4])
    torch.testing.assert_close(direct.local, given.local, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(direct.level_logits, given.level_logits, atol=1e-4, rtol=1e-4)
    for strategy in ("local", "listwise", "hybrid", "sliding"):
        for lists in (as_served, with_cosines, with_similarity(drawn_lists(4, 23, seed=13), seed=14)):
            for a, b in zip(reranker.rank_lists(lists, strategy), served.rank_lists(lists, strategy)):
                np.testing.assert_array_equal(a.order, b.order)


def served_lists_builder(seed: int, products: int = 30, count: int = 4, k: int = 23):
    """A feature builder over random unit vectors, and ``count`` (query vector, keys, scores) to build lists of."""
    from vitrine.rerank.features import FeatureBuilder

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(RELATIONS), products, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    table = ProductTable(np.arange(products), np.zeros(products), *vectors, np.ones(products, bool),
                         [str(i) for i in range(products)], [f"product {i}" for i in range(products)],
                         [[] for _ in range(products)])
    queries = [(vectors[0, i], rng.permutation(products)[:k], np.sort(rng.random(k))[::-1]) for i in range(count)]
    return FeatureBuilder(table), queries


def test_served_lists_carry_vectors_and_rank_as_lists_with_cosines():
    """Serving hands the chunk model the candidates' vectors (``relations_read``), from which it computes the
    cosines within each chunk or window itself: every strategy ranks such lists exactly as lists that carry
    every pair's cosine, and pointwise serving carries neither."""
    relational, _ = relational_pair(seed=4)
    with torch.no_grad():
        relational.relation.copy_(torch.randn(relational.relation.shape) * 0.5)
    reranker = Reranker(FeatureSpec(DIM), relational)
    builder, queries = served_lists_builder(seed=8)
    with_cosines = [builder.build(query, None, True, keys, scores) for query, keys, scores in queries]
    for strategy in ("local", "listwise", "absolute", "hybrid", "sliding"):
        assert reranker.relations_read(strategy) == {"relations": "vectors"}
        as_served = [builder.build(query, None, True, keys, scores, **reranker.relations_read(strategy))
                     for query, keys, scores in queries]
        assert all(found.similarity is None and found.relation_vectors.shape == (len(RELATIONS), 23, DIM)
                   for found in as_served)
        for a, b in zip(reranker.rank_lists(with_cosines, strategy), reranker.rank_lists(as_served, strategy)):
            np.testing.assert_array_equal(a.order, b.order)
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    assert reranker.relations_read("pointwise") == {"relations": "none"}
    query, keys, scores = queries[0]
    unrelated = builder.build(query, None, True, keys, scores, **reranker.relations_read("pointwise"))
    assert unrelated.similarity is None and unrelated.relation_vectors is None


def test_absolute_scores_can_start_from_the_local_scores():
    """``absolute_prior = local``: before its correction trains, r ranks every list as the local scores do,
    across chunks too (which is what the hybrid merge compares)."""
    from vitrine.rerank.reranker import stack_lists

    spec = FeatureSpec(DIM)
    torch.manual_seed(4)
    model = ChunkListwiseModel(model_config(spec, small_config(absolute_prior="local"))).eval()
    with torch.no_grad():  # a local head that has learned something other than the retrieval order
        model.local_head.weight.normal_()
    lists = drawn_lists(3, 23, seed=15)
    out = model(*stack_lists(lists, 10)[:4])
    real = torch.isfinite(out.local)
    r = out.level_logits.softmax(dim=-1)[..., 0]
    order = lambda scores: torch.argsort(scores[real], descending=True)  # noqa: E731
    assert torch.equal(order(r), order(out.local))
    retrieval_start = ChunkListwiseModel(model_config(spec, small_config())).eval()
    retrieval_start.load_state_dict(model.state_dict())
    other = retrieval_start(*stack_lists(lists, 10)[:4])
    assert not torch.equal(order(other.level_logits.softmax(dim=-1)[..., 0]), order(other.local))
    with pytest.raises(Exception, match="unknown rerank.absolute_prior 'best'"):
        model_config(spec, small_config(absolute_prior="best"))
