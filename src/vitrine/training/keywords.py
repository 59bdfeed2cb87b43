"""Keyword Enhancement (MAKE): catalog keywords as extra short queries and as false-negative signals.

Keywords are the terms with the highest TF-IDF weight in a product's title and description. We use
TF-IDF rather than a per-document extractor such as YAKE because what makes a word a good query is
that it singles the product out *within this catalog*: "milk" describes a carton but picks out
nothing in a dairy aisle, and only corpus statistics (the IDF) know that. It is deterministic,
needs no model, and costs nothing at query time: keywords only shape training.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

_HTML = re.compile(r"<[^>]+>")


def extract_keywords(texts: Sequence[str], top_n: int = 5, max_df: float = 0.3) -> list[list[str]]:
    """The ``top_n`` most distinctive unigrams and bigrams of each text, best first."""
    if not texts:
        return []
    vectorizer = TfidfVectorizer(stop_words="english", ngram_range=(1, 2), sublinear_tf=True,
                                 max_df=max_df if len(texts) >= 10 else 1.0,
                                 token_pattern=r"(?u)\b[^\W\d_][\w\-]+\b")
    try:
        weights = vectorizer.fit_transform([_HTML.sub(" ", text) for text in texts]).tocsr()
    except ValueError:  # every text was empty or stop words only
        return [[] for _ in texts]
    vocabulary = vectorizer.get_feature_names_out()
    keywords = []
    for row in range(weights.shape[0]):
        start, end = weights.indptr[row], weights.indptr[row + 1]
        order = np.argsort(-weights.data[start:end], kind="stable")[: top_n * 2]
        chosen: list[str] = []
        for term in vocabulary[weights.indices[start:end][order]]:
            if not any(term in kept or kept in term for kept in chosen):  # no "oat" beside "oat milk"
                chosen.append(str(term))
            if len(chosen) == top_n:
                break
        keywords.append(chosen)
    return keywords


def keyword_queries(keywords: Sequence[str], count: int = 2) -> list[str]:
    """Short shopper-like queries from a product's keywords: the best one, then the best two together."""
    queries = [keywords[0]] if keywords else []
    if len(keywords) > 1:
        queries.append(f"{keywords[0]} {keywords[1]}")
    return queries[:count]


def keyword_overlap(first: Sequence[str], second: Sequence[str]) -> float:
    """Jaccard overlap of two keyword lists: high overlap marks a likely false negative."""
    a, b = set(first), set(second)
    return len(a & b) / len(a | b) if a and b else 0.0
