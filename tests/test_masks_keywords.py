import numpy as np

from vitrine.training.keywords import extract_keywords, keyword_overlap, keyword_queries
from vitrine.training.masks import batch_mask, equivalence_matrix, keyword_twins


def test_equivalence_from_groups():
    relation = equivalence_matrix(["g1", None, "g1", "g2"]).toarray()
    assert relation[0, 2] and relation[2, 0]
    assert relation[1, 1] and not relation[1, 0]
    assert not relation[0, 3]


def test_keyword_twins_by_jaccard():
    twins = keyword_twins([["oat", "milk"], ["oat", "milk", "organic"], ["soap"]], threshold=0.6).toarray()
    assert twins[0, 1] and twins[1, 0]  # 2 shared of 3 = 0.67
    assert not twins[0, 2]
    assert not keyword_twins([["oat", "milk"], ["oat", "milk", "organic"]], threshold=0.7).toarray()[0, 1]


def test_batch_mask_combines_relations_and_graded_relevance():
    relation = equivalence_matrix(["a", "a", None, None])
    mask = batch_mask(relation, positives=np.array([0, 2]), keys=np.array([0, 2, 1, 3]),
                      relevant=[np.array([], dtype=np.int64), np.array([3])])
    assert mask.tolist() == [[True, False, True, False],   # product 1 shares product 0's group
                             [False, True, False, True]]   # product 3 is also relevant to query 2


def test_keywords_are_distinctive_not_common():
    texts = [f"Fresh milk carton {word}" for word in ("oat", "soy", "almond", "goat", "rice", "pea")] * 2
    texts += ["Fresh milk carton with coconut flakes", "Fresh bread loaf sourdough"]
    keywords = extract_keywords(texts, top_n=2)
    assert "coconut" in " ".join(keywords[-2])
    assert all("milk" not in word and "fresh" not in word for word in keywords[-2])
    assert keyword_queries(["coconut", "flakes", "x"]) == ["coconut", "coconut flakes"]
    assert keyword_overlap(["a", "b"], ["b", "c"]) == 1 / 3
    assert extract_keywords([]) == [] and extract_keywords(["the", "a"]) == [[], []]
