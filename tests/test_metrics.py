import math

import pytest

from vitrine.errors import VitrineError
from vitrine.evaluation import EvalReport, QueryResult
from vitrine.evaluation.compare import compare_reports
from vitrine.evaluation.confusions import confusions, hardest_products
from vitrine.evaluation.evaluate import segments_by_training
from vitrine.evaluation.metrics import (
    average_precision_at_k,
    mean_metrics,
    ndcg_at_k,
    precision_at_k,
    query_metrics,
    recall_at_k,
    reciprocal_rank,
)

RANKED = ["a", "x", "b", "y", "c"]
RELEVANT = {"a": 1, "b": 1, "c": 1, "d": 1}


def test_recall_counts_relevant_found_in_top_k():
    assert recall_at_k(RANKED, RELEVANT, 1) == 0.25
    assert recall_at_k(RANKED, RELEVANT, 3) == 0.5
    assert recall_at_k(RANKED, RELEVANT, 5) == 0.75
    assert recall_at_k(RANKED, {}, 5) == 0.0


def test_zero_grades_are_not_relevant():
    assert recall_at_k(["a"], {"a": 0, "b": 2}, 1) == 0.0
    assert reciprocal_rank(["a", "b"], {"a": 0, "b": 2}) == 0.5


def test_precision():
    assert precision_at_k(RANKED, RELEVANT, 2) == 0.5


def test_average_precision_by_hand():
    # hits at ranks 1, 3, 5: (1/1 + 2/3 + 3/5) / min(4, 5)
    assert average_precision_at_k(RANKED, RELEVANT, 5) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    # cut at 3: hits at 1 and 3, denominator min(4, 3) = 3
    assert average_precision_at_k(RANKED, RELEVANT, 3) == pytest.approx((1 + 2 / 3) / 3)


def test_ndcg_graded_by_hand():
    ranked = ["b", "a", "z"]
    relevant = {"a": 3, "b": 1}
    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    ideal = 3 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(["a", "b"], relevant, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["z"], relevant, 10) == 0.0


def test_reciprocal_rank():
    assert reciprocal_rank(["x", "y", "a"], {"a": 1}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x"], {"a": 1}) == 0.0


def test_query_metrics_and_mean():
    one = query_metrics(["a", "b"], {"a": 1})
    two = query_metrics(["b", "a"], {"a": 1})
    assert one["recall@1"] == 1.0 and two["recall@1"] == 0.0
    mean = mean_metrics([one, two])
    assert mean["recall@1"] == 0.5
    assert mean["mrr"] == pytest.approx(0.75)
    assert set(mean) == {"recall@1", "recall@5", "recall@10", "map@10", "ndcg@10", "mrr"}


def _report(hits: dict[str, float]) -> dict:
    """An eval report's JSON shape: per-query metrics keyed by where the query came from."""
    return {"per_query": [{"where": where, "metrics": {"recall@1": hit, "mrr": 0.5 + hit / 2}}
                          for where, hit in hits.items()]}


def test_compare_pairs_queries_and_separates_a_gain_from_a_tie():
    base = {f"q{i}": float(i % 2) for i in range(60)}  # half the queries hit
    better = {where: 1.0 for where in base}  # every query hits: +0.5, every difference >= 0
    result = compare_reports(_report(base), _report(better))
    recall = next(row for row in result.metrics if row.metric == "recall@1")
    assert (recall.a, recall.b, recall.difference) == (0.5, 1.0, 0.5)
    assert 0 < recall.low <= 0.5 <= recall.high and recall.verdict == "b better"
    assert compare_reports(_report(better), _report(base)).metrics[0].verdict == "a better"
    flipped = {where: 1.0 - hit for where, hit in base.items()}  # the other half hits: same mean, every query moves
    tie = compare_reports(_report(base), _report(flipped), metrics=["recall@1"])
    assert [row.metric for row in tie.metrics] == ["recall@1"] and tie.metrics[0].verdict == "tie"
    assert tie.metrics[0].low < 0 < tie.metrics[0].high


def test_compare_counts_unpaired_queries_and_refuses_disjoint_reports():
    result = compare_reports(_report({"a": 1.0, "b": 0.0, "c": 1.0}), _report({"b": 1.0, "c": 1.0, "d": 0.0}))
    assert (result.shared, result.only_a, result.only_b) == (2, 1, 1)
    assert result.metrics[0].a == 0.5 and result.metrics[0].b == 1.0  # over b and c only
    with pytest.raises(VitrineError, match="no query in common"):
        compare_reports(_report({"a": 1.0}), _report({"z": 1.0}))
    with pytest.raises(VitrineError, match="'ndcg@10' is not in both reports"):
        compare_reports(_report({"a": 1.0}), _report({"a": 0.0}), metrics=["ndcg@10"])


def _result(relevant: dict[str, int], ranked: list[str]) -> QueryResult:
    return QueryResult("q", None, None, relevant, ranked, {})


def test_confusions_and_hardest_products_by_hand():
    results = ([_result({"kiwi": 1}, ["onion", "kiwi"])] * 3 + [_result({"kiwi": 1}, ["potato"])]
               + [_result({"kiwi": 1}, ["kiwi"])] + [_result({"peach": 1}, ["plum"])] * 2
               + [_result({"milk": 1}, ["milk"])] * 4
               + [_result({"tv": 2, "radio": 2, "cable": 1}, ["cable"])]  # two exact matches: no single one wanted
               + [_result({"soup": 3, "bowl": 1}, ["bowl"])])  # graded: the top grade is the one wanted
    title = {"kiwi": "Kiwi", "onion": "Yellow Onion"}.get
    found = [(c.wanted, c.given, c.queries) for c in confusions(results)]
    assert found == [("kiwi", "onion", 3), ("peach", "plum", 2), ("kiwi", "potato", 1), ("soup", "bowl", 1)]
    first = confusions(results, lambda pid: title(pid) or "", top=1)[0]
    assert (first.wanted_title, first.given_title) == ("Kiwi", "Yellow Onion")
    rows = [(p.product, p.queries, p.first, p.instead) for p in hardest_products(results)]
    # shares: peach 0/2, soup 0/1, kiwi 1/5; milk (4/4) and the two-match query are left out
    assert rows == [("peach", 2, 0, "plum"), ("soup", 1, 0, "bowl"), ("kiwi", 5, 1, "onion")]
    assert [p.product for p in hardest_products(results, top=1)] == ["peach"]


def test_eval_report_tables_its_confusions():
    results = [_result({"kiwi": 1}, ["onion"])] * 2 + [_result({"kiwi": 1}, ["kiwi"])]
    title = {"kiwi": "Kiwi fruit", "onion": "Onion"}.get
    report = EvalReport("q", 3, {"recall@1": 1 / 3}, 0.1, results,
                        confusions=confusions(results, title), hardest=hardest_products(results, title))
    markdown = report.markdown()
    assert "| 2 | Kiwi fruit (kiwi) | Onion |" in markdown  # a title that spells the id does not repeat it
    assert "| Kiwi fruit (kiwi) | 3 | 1 | Onion |" in markdown
    assert report.confusion_line() == ("most frequent misses (queries: wanted -> ranked first): "
                                       "2: Kiwi fruit (kiwi) -> Onion")
    assert EvalReport("q", 1, {}, 0.1, results[2:]).confusion_line() is None


def test_metrics_split_by_whether_the_towers_trained_on_the_wanted_product():
    def scored(relevant: dict[str, int], ranked: list[str]) -> QueryResult:
        return QueryResult("q", None, None, relevant, ranked, query_metrics(ranked, relevant))

    results = [scored({"kiwi": 1}, ["onion", "kiwi"]), scored({"kiwi": 1}, ["kiwi"]),  # never trained on
               scored({"onion": 1}, ["onion"]), scored({"onion": 2, "kiwi": 1}, ["kiwi", "onion"]),  # trained on
               scored({"onion": 1, "kiwi": 1}, ["onion"])]  # one of each: neither
    segments = segments_by_training(results, {"onion", "leek"})
    assert {name: part["queries"] for name, part in segments.items()} == {"trained on": 2, "never trained on": 2}
    assert segments["never trained on"]["metrics"]["recall@1"] == 0.5
    assert segments["never trained on"]["metrics"]["mrr"] == pytest.approx(0.75)
    assert segments["trained on"]["metrics"]["recall@1"] == 0.75  # the graded query: one of its two relevant first
    assert segments_by_training(results[2:4], {"onion"}) == {}  # no query about a never-trained product
    assert segments_by_training(results, None) == {}  # zero-shot, or a model saved without its list
    report = EvalReport("q", 5, mean_metrics([r.metrics for r in results]), 0.1, results, segments=segments)
    assert "| metric | value | trained on (2) | never trained on (2) |" in report.markdown()
    assert "| recall@1 | 0.6000 | 0.7500 | 0.5000 |" in report.markdown()
