"""The lexical channel (BM25 via bm25s) and reciprocal rank fusion."""

from __future__ import annotations

import math
from pathlib import Path

import bm25s
import numpy as np
import pytest

from vitrine.errors import StoreError
from vitrine.index import LexicalIndex, reciprocal_rank_fusion
from vitrine.index.fusion import fuse_batches

MILKS = {10: "Oat milk barista edition", 11: "Whole milk fresh", 12: "Skim milk fresh", 13: "Milk chocolate bar"}


def build(texts: dict[int, str], **kwargs) -> LexicalIndex:
    index = LexicalIndex(**kwargs)
    index.add(np.array(list(texts), dtype=np.int64), list(texts.values()))
    return index


def top(index: LexicalIndex, query: str, k: int = 5) -> list[int]:
    return [int(id_) for id_ in index.search([query], k)[1][0] if id_ >= 0]


# --- BM25 ---------------------------------------------------------------------------------------


def test_rare_term_ranks_first():
    scores, ids = build(MILKS).search(["oat milk", "chocolate"], 4)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == scores.shape == (2, 4)
    assert ids[0, 0] == 10  # every document has "milk"; only one has "oat"
    assert set(ids[0]) == {10, 11, 12, 13}
    assert np.all(np.diff(scores[0]) <= 0) and np.all(scores[0] > 0)
    assert ids[1].tolist() == [13, -1, -1, -1]


def test_scores_are_lucene_bm25_with_the_given_k1_and_b():
    k1, b = 1.2, 0.6
    docs = {1: "red apple red", 2: "green apple", 3: "banana"}
    scores, ids = build(docs, k1=k1, b=b).search(["red"], 3)
    lengths, avg = {1: 3, 2: 2, 3: 1}, 2.0
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    expected = idf * 2 / (2 + k1 * (1 - b + b * lengths[1] / avg))
    assert ids[0].tolist() == [1, -1, -1]
    assert scores[0, 0] == pytest.approx(expected, rel=1e-5)


def test_no_shared_term_returns_only_padding():
    index = build(MILKS)
    for query in ["kerosene", "", "the of and", "<b></b>"]:
        scores, ids = index.search([query], 3)
        assert ids.tolist() == [[-1, -1, -1]], query
        assert scores.tolist() == [[0.0, 0.0, 0.0]]


def test_unmatched_documents_are_not_returned_even_when_k_is_large():
    scores, ids = build(MILKS).search(["barista", "fresh"], 10)
    assert ids.shape == (2, 10)
    assert ids[0].tolist() == [10] + [-1] * 9
    assert sorted(ids[1, :2].tolist()) == [11, 12] and (ids[1, 2:] == -1).all() and (scores[1, 2:] == 0).all()


def test_empty_index_and_degenerate_calls():
    index = LexicalIndex()
    assert len(index) == 0 and index.ids().tolist() == []
    assert index.search(["milk"], 3)[1].tolist() == [[-1, -1, -1]]
    index.add(np.array([1, 2]), ["", "<p></p>"])  # documents with no token at all
    assert index.search(["milk", "p"], 2)[1].tolist() == [[-1, -1], [-1, -1]]
    scores, ids = build(MILKS).search([], 3)
    assert scores.shape == ids.shape == (0, 3)
    assert build(MILKS).search(["milk"], 0)[1].shape == (1, 0)


def test_remove_and_update_by_id():
    index = build(MILKS)
    assert 10 in index and 99 not in index and len(index) == 4
    assert index.remove(np.array([10, 99])) == 1
    assert index.remove(np.array([10])) == 0
    assert 10 not in index and len(index) == 3
    assert top(index, "oat") == []
    assert sorted(top(index, "milk")) == [11, 12, 13]

    index.add(np.array([11]), ["Oat drink unsweetened"])  # update: the old text is gone
    assert len(index) == 3 and sorted(index.ids().tolist()) == [11, 12, 13]
    assert top(index, "oat") == [11]
    assert top(index, "whole") == []
    assert sorted(top(index, "milk")) == [12, 13]


def test_add_rejects_mismatched_or_repeated_ids():
    index = LexicalIndex()
    with pytest.raises(ValueError):
        index.add(np.array([1, 2]), ["one"])
    with pytest.raises(ValueError):
        index.add(np.array([1, 1]), ["one", "two"])
    assert len(index) == 0


def test_model_is_rebuilt_lazily_once_per_change(monkeypatch):
    builds = []
    original = bm25s.BM25.index
    monkeypatch.setattr(bm25s.BM25, "index", lambda self, *a, **kw: builds.append(1) or original(self, *a, **kw))
    index = LexicalIndex()
    for id_, text in MILKS.items():
        index.add(np.array([id_]), [text])
    assert builds == []
    index.search(["milk"], 2)
    index.search(["oat"], 2)
    assert len(builds) == 1
    index.remove(np.array([12]))
    index.search(["milk"], 2)
    assert len(builds) == 2


def test_save_then_load_gives_identical_results(tmp_path: Path):
    index = build(MILKS, k1=1.2, b=0.5)
    index.add(np.array([20, 21]), ["Maling TTS Canned Pork Luncheon Meat 397 gr", "<i>Oat</i> cookies 12 pcs"])
    index.remove(np.array([11]))
    queries = ["oat milk", "luncheon 397", "fresh", "nothing here"]
    before = index.search(queries, 5)
    assert not LexicalIndex.exists(tmp_path / "index")
    index.save(tmp_path / "index")
    assert LexicalIndex.exists(tmp_path / "index")
    assert [p.name for p in (tmp_path / "index").iterdir()] == ["lexical.json"]  # no temp file left behind
    loaded = LexicalIndex.load(tmp_path / "index")
    assert (loaded.k1, loaded.b, len(loaded)) == (1.2, 0.5, len(index))
    assert sorted(loaded.ids().tolist()) == sorted(index.ids().tolist())
    after = loaded.search(queries, 5)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])


def test_load_of_a_corrupt_file_names_it(tmp_path: Path):
    (tmp_path / "lexical.json").write_text("{not json")
    with pytest.raises(StoreError, match="lexical.json"):
        LexicalIndex.load(tmp_path)


# --- tokenisation -------------------------------------------------------------------------------


def test_mixed_indonesian_english_titles_and_sizes():
    index = build({1: "Maling TTS Canned Pork Luncheon Meat 397 gr", 2: "Pronas Corned Beef 198 gr",
                   3: "Indomie Mi Goreng Rasa Ayam Bawang 85 g", 4: "Baut Stainless 12 mm", 5: "Baut Besi 10 mm",
                   6: "Ultra Milk Full Cream 1 L"})
    assert top(index, "luncheon 397") == [1]
    assert top(index, "397") == [1]
    assert top(index, "LUNCHEON-MEAT")[0] == 1
    assert top(index, "mi goreng ayam") == [3]
    assert top(index, "baut 12 mm")[0] == 4
    assert set(top(index, "gr")) == {1, 2}
    assert top(index, "1") == [6]  # single characters are tokens too: "1 L" keeps its size


def test_unicode_letters_and_widths():
    index = build({1: "Café Crème Brûlée", 2: "Ｏａｔ milk"})  # accents kept; full-width folded
    assert top(index, "CAFÉ") == [1]
    assert top(index, "brûlée") == [1]
    assert top(index, "oat") == [2]


def test_html_is_stripped_before_tokenising():
    index = build({1: "<b>oat</b>milk", 2: "<p class='x'>Salt &amp; Vinegar</p> chips", 3: "plain bread"})
    assert top(index, "oat") == [1]
    assert top(index, "milk") == [1]
    assert top(index, "b") == [] and top(index, "class") == [] and top(index, "amp") == []
    assert top(index, "vinegar") == [2]
    assert index.tokenize(["<b>oat</b>milk"]) == [["oat", "milk"]]


def test_stopwords_are_optional():
    assert LexicalIndex().tokenize(["The Oat and the Milk"]) == [["oat", "milk"]]
    assert LexicalIndex(stopwords=None).tokenize(["The Oat"]) == [["the", "oat"]]


# --- reciprocal rank fusion ---------------------------------------------------------------------


def test_rrf_matches_hand_computed_scores():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]])
    assert [id_ for id_, _ in fused] == [1, 3, 2]
    expected = {1: 1 / 61 + 1 / 62, 3: 1 / 63 + 1 / 61, 2: 1 / 62}
    for id_, score in fused:
        assert score == pytest.approx(expected[id_], abs=1e-12)


def test_rrf_weights_and_k():
    fused = dict(reciprocal_rank_fusion([[1, 2, 3], [3, 1]], weights=[1.0, 3.0]))
    assert fused == pytest.approx({1: 1 / 61 + 3 / 62, 3: 1 / 63 + 3 / 61, 2: 1 / 62})
    assert max(fused, key=fused.get) == 3  # the heavier channel's favourite wins
    assert dict(reciprocal_rank_fusion([[1, 2]], k=0)) == pytest.approx({1: 1.0, 2: 0.5})
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1], [2]], weights=[1.0])


def test_rrf_ignores_padding_ties_by_first_appearance_and_limits():
    fused = reciprocal_rank_fusion([[-1, 4, -1, 5]])  # padding does not use up a rank
    assert [id_ for id_, _ in fused] == [4, 5]
    assert [score for _, score in fused] == pytest.approx([1 / 61, 1 / 62])
    assert [id_ for id_, _ in reciprocal_rank_fusion([[5], [7]])] == [5, 7]
    assert [id_ for id_, _ in reciprocal_rank_fusion([[7], [5]])] == [7, 5]
    assert [id_ for id_, _ in reciprocal_rank_fusion([[1, 2, 3], [3, 1]], limit=2)] == [1, 3]
    assert reciprocal_rank_fusion([]) == [] and reciprocal_rank_fusion([[-1, -1]]) == []


def test_fuse_batches_shape_padding_and_agreement():
    dense = np.array([[1, 2, 3], [7, -1, -1]], dtype=np.int64)
    lexical = np.array([[3, 1], [-1, -1]], dtype=np.int64)
    scores, ids = fuse_batches([dense, lexical], k_out=4)
    assert scores.shape == ids.shape == (2, 4) and scores.dtype == np.float32 and ids.dtype == np.int64
    assert ids.tolist() == [[1, 3, 2, -1], [7, -1, -1, -1]]
    assert scores[0, :3] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62])
    assert scores[0, 3] == 0 and (scores[1, 1:] == 0).all() and scores[1, 0] == pytest.approx(1 / 61)
    weighted = fuse_batches([dense, lexical], k_out=2, weights=[1.0, 3.0])[1]
    assert weighted.tolist() == [[3, 1], [7, -1]]
    with pytest.raises(ValueError):
        fuse_batches([dense, lexical[:1]], k_out=2)


def test_convex_fusion_matches_hand_computed_scores():
    from vitrine.index.fusion import convex_fusion, fuse_channels

    # vector cosines 0.9, 0.5, 0.1 -> 1, 0.5, 0; BM25 10, 2 -> 1, 0; equal weights; missing = 0
    fused = dict(convex_fusion([[0.9, 0.5, 0.1], [10.0, 2.0]], [[1, 2, 3], [3, 4]]))
    assert fused == pytest.approx({1: 0.5, 2: 0.25, 3: 0.5, 4: 0.0})
    # RRF reads ranks only, so 3 (last and first) ties 1 (first and absent) at best; convex keeps BM25's lead
    weighted = dict(convex_fusion([[0.9, 0.5, 0.1], [10.0, 2.0]], [[1, 2, 3], [3, 4]], weights=[1.0, 3.0]))
    assert weighted[3] == pytest.approx(0.75) and max(weighted, key=weighted.get) == 3
    # padding is skipped, a repeat keeps its first score, one candidate alone scores 1
    fused = dict(convex_fusion([[5.0, 9.0, 1.0, 3.0], [2.0]], [[-1, 7, 7, 8], [9]]))
    assert fused == pytest.approx({7: 0.5, 8: 0.0, 9: 0.5})
    scores, ids = fuse_channels("convex", [np.array([[0.9, 0.5, 0.1]]), np.array([[10.0, 2.0]])],
                                [np.array([[1, 2, 3]]), np.array([[3, 4]])], 5)
    assert ids.tolist() == [[1, 3, 2, 4, -1]] and scores[0, :4] == pytest.approx([0.5, 0.5, 0.25, 0.0])
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse_channels("mean", [np.zeros((1, 1))], [np.zeros((1, 1), dtype=np.int64)], 1)
    with pytest.raises(ValueError, match="non-negative weight"):
        convex_fusion([[1.0]], [[1]], weights=[0.0])


def test_lexical_and_rrf_together():
    index = build(MILKS)
    lexical_ids = index.search(["oat"], 3)[1]
    dense_ids = np.array([[11, 10, 12]])
    _, fused = fuse_batches([dense_ids, lexical_ids], k_out=3)
    assert fused[0, 0] == 10  # second in one channel, first in the other
