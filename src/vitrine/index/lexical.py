"""BM25 over product text: the lexical channel that catches what embeddings blur (brands, sizes, codes).

Scoring is ``bm25s``; this module only keeps the id <-> text mapping that ``bm25s`` lacks (it indexes a
fixed corpus by row). Adds and removes only mark the model stale, and the next search rebuilds it
once, so a bulk load of 10^5 products costs one build rather than one per batch.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer

from vitrine.config import write_atomic
from vitrine.errors import StoreError

FILE_NAME = "lexical.json"
FORMAT = 1
# Runs of letters or digits in any script; "_" is not a letter. Single characters are kept so "1 L" keeps its "1".
TOKEN_PATTERN = r"[^\W_]+"
_TAG = re.compile(r"<[^>]*>")


def clean_text(text: str) -> str:
    """Tags become spaces (a ``<br>`` separates words), entities are decoded, widths folded (NFKC)."""
    return unicodedata.normalize("NFKC", html.unescape(_TAG.sub(" ", text)))


class LexicalIndex:
    def __init__(self, k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en") -> None:
        self.k1 = float(k1)
        self.b = float(b)
        self.stopwords = stopwords
        self._texts: dict[int, str] = {}
        self._model: bm25s.BM25 | None = None
        self._rows = np.zeros(0, dtype=np.int64)  # model row -> catalog key
        self._stale = False
        self._row_of: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self._texts)

    def ids(self) -> np.ndarray:
        return np.fromiter(self._texts.keys(), dtype=np.int64, count=len(self._texts))

    def __contains__(self, id_: object) -> bool:
        try:
            return int(id_) in self._texts  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def text(self, id_: int) -> str:
        return self._texts[int(id_)]

    def add(self, ids: np.ndarray, texts: Sequence[str]) -> None:
        """Index ``texts`` under ``ids``; an id already present is replaced (an update)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        texts = list(texts)
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids in one add must be distinct")
        if not len(ids):
            return
        for id_, text in zip(ids.tolist(), texts):
            if not isinstance(text, str):
                raise TypeError(f"text for id {id_} is {type(text).__name__}, not str")
            self._texts.pop(id_, None)  # an update moves to the end, as a fresh add would
            self._texts[id_] = text
        self._stale = True

    def remove(self, ids: np.ndarray) -> int:
        """Remove the given ids; unknown ids are ignored. Returns how many were removed."""
        removed = sum(self._texts.pop(id_, None) is not None
                      for id_ in np.asarray(ids, dtype=np.int64).reshape(-1).tolist())
        if removed:
            self._stale = True
        return removed

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(len(queries), k)``, best first; slots without a matching document
        have id -1 and score 0 (a document sharing no term with the query is not a result)."""
        if isinstance(queries, str):
            queries = [queries]
        nq, k = len(queries), max(int(k), 0)
        scores = np.zeros((nq, k), dtype=np.float32)
        keys = np.full((nq, k), -1, dtype=np.int64)
        if k == 0 or nq == 0 or len(self) == 0:
            return scores, keys
        model, rows = self._current_model()
        if model is None:
            return scores, keys
        tokens = [[token for token in query if token in model.vocab_dict] for query in self.tokenize(queries)]
        asked = [i for i, query in enumerate(tokens) if query]  # bm25s would log about empty ones
        if not asked:
            return scores, keys
        top = min(k, len(rows))
        found = model.retrieve([tokens[i] for i in asked], k=top, show_progress=False, n_threads=0,
                               backend_selection="numpy")
        hit_scores = np.asarray(found.scores, dtype=np.float32).reshape(len(asked), top)
        hit_rows = np.asarray(found.documents, dtype=np.int64).reshape(len(asked), top)
        hit = hit_scores > 0
        scores[asked, :top] = np.where(hit, hit_scores, 0.0)
        keys[asked, :top] = np.where(hit, rows[hit_rows], -1)
        return scores, keys

    def scores_of(self, query: str, ids: Sequence[int]) -> np.ndarray:
        """BM25 scores of the given documents for one query (0 for unknown ids or no shared term):
        what a reranker reads as its lexical feature, whatever the retriever returned."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros(len(ids), dtype=np.float32)
        model, rows = self._current_model()
        if model is None or not len(ids) or not query:
            return out
        tokens = [token for token in self.tokenize([query])[0] if token in model.vocab_dict]
        if not tokens:
            return out
        if self._row_of is None:
            self._row_of = {int(key): row for row, key in enumerate(rows.tolist())}
        positions = np.array([self._row_of.get(int(id_), -1) for id_ in ids.tolist()])
        scores = np.asarray(model.get_scores(tokens), dtype=np.float32)
        found = positions >= 0
        out[found] = scores[positions[found]]
        return out

    def tokenize(self, texts: Iterable[str]) -> list[list[str]]:
        """Lowercased letter/digit runs of the cleaned texts, English stopwords dropped; no stemming,
        so Indonesian and English titles are treated alike."""
        return self._tokenize(texts, "string")

    def save(self, folder: Path) -> None:
        """One JSON file, replaced atomically; the BM25 model is derived and rebuilt on load."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, **self.describe(), "ids": list(self._texts.keys()),
                   "texts": list(self._texts.values())}
        write_atomic(folder / FILE_NAME, json.dumps(payload, ensure_ascii=False).encode("utf-8"))

    @classmethod
    def exists(cls, folder: Path) -> bool:
        return (Path(folder) / FILE_NAME).is_file()

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        path = Path(folder) / FILE_NAME
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("format") != FORMAT:
                raise ValueError(f"format {saved.get('format')!r}, expected {FORMAT}")
            self = cls(k1=saved["k1"], b=saved["b"], stopwords=saved["stopwords"])
            self.add(np.asarray(saved["ids"], dtype=np.int64), saved["texts"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: cannot read the lexical index ({exc}); "
                             "rebuild it with 'vitrine index --rebuild'") from None
        return self

    def describe(self) -> dict:
        return {"backend": "bm25s", "k1": self.k1, "b": self.b, "stopwords": self.stopwords, "count": len(self)}

    # --- internals ---------------------------------------------------------------------------

    def _tokenize(self, texts: Iterable[str], return_as: str):
        # A fresh bm25s tokenizer per call: its vocabulary is per corpus, and queries must not grow it.
        tokenizer = Tokenizer(lower=True, splitter=TOKEN_PATTERN, stopwords=self.stopwords or None)
        return tokenizer.tokenize([clean_text(text) for text in texts], update_vocab=True, return_as=return_as,
                                  show_progress=False, allow_empty=False)

    def _current_model(self) -> tuple[bm25s.BM25 | None, np.ndarray]:
        """The BM25 model over the current texts, rebuilt if anything changed since the last search."""
        if self._stale:
            rows = self.ids()
            corpus = self._tokenize(self._texts.values(), "tuple")  # token ids + vocab: bm25s skips a string pass
            model = None
            if corpus.vocab:  # bm25s cannot index a corpus without a single token
                model = bm25s.BM25(k1=self.k1, b=self.b)  # method "lucene": idf > 0, so score 0 means no shared term
                model.index(corpus, show_progress=False)
            self._model, self._rows, self._stale, self._row_of = model, rows, False, None
        return self._model, self._rows
