"""Hashed word and character n-grams: the sparse text input of a trainable n-gram embedding.

Amazon's semantic product search (Nigam et al., KDD 2019) embeds queries and products as the average of
learned embeddings of their word unigrams, bigrams and character trigrams, hashed into a fixed number of
buckets: model numbers, sizes, brands and words of any language get vectors of their own, which a
pretrained sentence model reads poorly. Here that embedding is a residual on the text towers (see
``vitrine.embedding.towers.NgramEmbedding``); this module only turns texts into the sparse bags it reads.

Hashing is scikit-learn's ``HashingVectorizer`` (MurmurHash3): stateless, so a model needs no vocabulary
file and serves any text, and the same text always lands in the same buckets on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize


class NgramHasher:
    """Texts -> L2-normalised bags of hashed n-grams: word 1..``word_n``-grams and character
    ``char_n``-grams taken within words (``char_n`` = 0 leaves characters out), optionally weighted by
    inverse document frequency (``idf``, see ``fit_idf``)."""

    def __init__(self, buckets: int, word_n: int = 2, char_n: int = 3) -> None:
        if buckets < 1 or word_n < 1 or char_n < 0:
            raise ValueError(f"n-gram hashing needs buckets >= 1, word_n >= 1, char_n >= 0; "
                             f"got {buckets}, {word_n}, {char_n}")
        self.buckets = buckets
        options = {"n_features": buckets, "alternate_sign": False, "norm": None, "dtype": np.float32}
        # Single characters count as words: the "5" of "5 kg" is what tells two sizes apart.
        self.vectorizers = [HashingVectorizer(analyzer="word", ngram_range=(1, word_n), token_pattern=r"(?u)\b\w+\b",
                                              **options)]
        if char_n:
            self.vectorizers.append(HashingVectorizer(analyzer="char_wb", ngram_range=(char_n, char_n), **options))

    def counts(self, texts: Sequence[str | None]) -> sp.csr_matrix:
        texts = [text or "" for text in texts]
        return sp.csr_matrix(sum(vectorizer.transform(texts) for vectorizer in self.vectorizers), dtype=np.float32)

    def fit_idf(self, texts: Sequence[str | None]) -> np.ndarray:
        """Smoothed inverse document frequency of every bucket over ``texts`` (scikit-learn's formula,
        ``ln((1 + n) / (1 + df)) + 1``): a bucket shared by every title weighs 1, a rare model number
        several times more, as in BM25. Buckets no text has get the highest weight."""
        counts = self.counts(texts)
        df = np.bincount(counts.indices, minlength=self.buckets)
        return (np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0).astype(np.float32)

    def transform(self, texts: Sequence[str | None], idf: np.ndarray | None = None) -> sp.csr_matrix:
        """``(len(texts), buckets)`` float32 CSR; a missing or empty text is an empty row."""
        counts = self.counts(texts)
        # Sub-linear counts: a word repeated in a title is not three times the evidence.
        counts.data = np.log1p(counts.data).astype(np.float32)
        if idf is not None:
            counts.data *= np.asarray(idf, dtype=np.float32)[counts.indices]
        return sp.csr_matrix(normalize(counts, norm="l2", copy=False), dtype=np.float32)


@dataclass
class NgramBatch:
    """Rows of an n-gram matrix in the form ``torch.nn.EmbeddingBag`` takes (flat ids, offsets, weights)."""

    ids: torch.Tensor
    offsets: torch.Tensor
    weights: torch.Tensor
    rows: int

    @classmethod
    def from_csr(cls, matrix: sp.csr_matrix) -> "NgramBatch":
        matrix = sp.csr_matrix(matrix)
        matrix.sort_indices()
        return cls(torch.from_numpy(matrix.indices.astype(np.int64)),
                   torch.from_numpy(matrix.indptr[:-1].astype(np.int64)),
                   torch.from_numpy(matrix.data.astype(np.float32)), matrix.shape[0])

    def __len__(self) -> int:
        return self.rows
