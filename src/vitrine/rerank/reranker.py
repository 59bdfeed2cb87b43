"""The front door: ``Reranker.load(folder).rank(query, candidates)``, with interchangeable strategies.

Strategies (``STRATEGIES``; a new one is one function and one line):

- ``pointwise``: each candidate scored alone (expected gain of its 4-level prediction);
- ``local``: the chunk model's local scores, sorted as if comparable across chunks (the naive baseline);
- ``listwise``: local scores minus the chunk's NULL score, so every chunk shares one zero point;
- ``absolute``: the calibrated absolute score r = P(instance match) alone;
- ``hybrid``: Pailitao-VL's merge: each chunk sorted by its local scores, then a K-way merge that
  repeatedly takes the chunk head with the highest r;
- ``sliding``: RankGPT's sliding window over the same chunk model (window M, stride S, back to front).

Every chunk strategy runs all chunks of all queries as one batched forward pass; only ``sliding``
runs window after window. Every strategy returns a permutation of its input: no candidate is dropped
or repeated.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vitrine.catalog.images import ImageInput
from vitrine.catalog.product import Product
from vitrine.config import write_atomic
from vitrine.errors import StoreError, VitrineError
from vitrine.rerank.calibration import Calibrator
from vitrine.rerank.features import RELATIONS, CandidateList, FeatureBuilder, FeatureSpec
from vitrine.rerank.history import HISTORY_FILE, QueryHistory
from vitrine.rerank.levels import LEVELS
from vitrine.rerank.merge import chunk_slices, merge_chunks, sliding_window
from vitrine.rerank.models import ChunkListwiseModel, ModelConfig, PointwiseScorer, expected_gain

FORMAT = "pailitao-reranker/1"


@dataclass(frozen=True)
class RerankQuery:
    """The query as the engine holds it: what the shopper gave and its vector."""

    text: str | None = None
    image: ImageInput | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Candidate:
    key: int
    """The product's catalog key (its vector id)."""
    score: float = 0.0
    """The retrieval score."""
    product: Product | None = None


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    score: float
    """The strategy's score (r for ``hybrid`` and ``absolute``); higher is better within one ranking."""
    rank: int
    position: int
    """Where the candidate was in the retrieved list (0-based)."""


@dataclass
class Ordering:
    """One list's result: ``order`` holds retrieval positions, best first; ``scores`` go with ``order``."""

    order: np.ndarray
    scores: np.ndarray


class BaseReranker(ABC):
    """What every reranker offers: reorder one query's candidates."""

    @abstractmethod
    def rank(self, query: RerankQuery, candidates: Sequence[Candidate]) -> list[Ranked]: ...


@dataclass
class RerankSettings:
    strategy: str = "hybrid"
    chunk_size: int = 10
    stride: int = 5


@dataclass
class Reranker(BaseReranker):
    """Feature-based Pailitao-VL reranker: a chunk listwise model and a pointwise scorer over the same
    features, a calibrator for r, and the feature builder bound to a store (``bind``)."""

    spec: FeatureSpec
    listwise: ChunkListwiseModel | None = None
    pointwise: PointwiseScorer | None = None
    calibrator: Calibrator = field(default_factory=Calibrator)
    settings: RerankSettings = field(default_factory=RerankSettings)
    embedding: dict[str, Any] = field(default_factory=dict)
    """The embedder the features were built with (vectors of another embedder mean nothing to it)."""
    features: FeatureBuilder | None = None
    history: QueryHistory | None = None
    """Past queries and the products they found (saved with the reranker; see ``vitrine.rerank.history``)."""
    runners: dict[str, Any] = field(default_factory=dict, repr=False)
    """What runs each model when serving (``serve_with``); the PyTorch model itself where absent."""

    def serve_with(self, runtime: str, threads: int = 0) -> "Reranker":
        """Run the models in ``runtime``: ``onnx`` (exported once, see ``vitrine.rerank.runtime``) or
        ``torch``. For serving only: a model trained further afterwards would not be seen."""
        from vitrine.encoders.onnx_runtime import check_runtime
        from vitrine.rerank.runtime import onnx_chunk_model, onnx_pointwise

        self.runners = {}
        if check_runtime(runtime) == "onnx":
            for kind, model, export in (("listwise", self.listwise, onnx_chunk_model),
                                        ("pointwise", self.pointwise, onnx_pointwise)):
                runner = export(model, threads) if model is not None else None
                if runner is not None:
                    self.runners[kind] = runner
        return self

    def builder(self, table, lexical=None) -> FeatureBuilder:
        """A feature builder over a product table and lexical index that reads this reranker's history."""
        return FeatureBuilder(table, lexical, self.history, self.spec.vectors)

    def bind(self, features: FeatureBuilder) -> "Reranker":
        if features.spec.dim != self.spec.dim:
            raise VitrineError(f"the reranker reads {self.spec.dim}-d vectors, the store's embedder gives "
                               f"{features.spec.dim}-d; train the reranker again ('vitrine train-reranker')")
        if features.spec.scalars != self.spec.scalars or features.spec.vectors != self.spec.vectors:
            raise VitrineError(f"the reranker was trained on other features ({', '.join(self.spec.scalars)}) than this "
                               "version of vitrine builds; train the reranker again ('vitrine train-reranker')")
        self.features = features
        return self

    # --- ranking -----------------------------------------------------------------------------

    def rank(self, query: RerankQuery, candidates: Sequence[Candidate], strategy: str | None = None) -> list[Ranked]:
        return self.rank_many([query], [candidates], strategy)[0]

    def rank_many(self, queries: Sequence[RerankQuery], candidates: Sequence[Sequence[Candidate]],
                  strategy: str | None = None) -> list[list[Ranked]]:
        if self.features is None:
            raise VitrineError("this reranker is not bound to a store's features (Reranker.bind)")
        lists = []
        relations = self.relations_read(strategy)
        for query, found in zip(queries, candidates):
            if query.vector is None:
                raise VitrineError("the reranker needs the query's vector")
            lists.append(self.features.build(query.vector, query.text, query.image is not None,
                                             [c.key for c in found], [c.score for c in found], **relations))
        results = []
        for found, ordering in zip(candidates, self.rank_lists(lists, strategy)):
            results.append([Ranked(found[pos], float(score), rank, int(pos))
                            for rank, (pos, score) in enumerate(zip(ordering.order.tolist(), ordering.scores), start=1)])
        return results

    def relations_read(self, strategy: str | None = None) -> dict[str, Any]:
        """What relates the candidates, as ``strategy`` is served (``FeatureBuilder.build`` arguments): the
        candidates' vectors for the chunk model (every strategy but pointwise), which computes the cosines
        within each chunk or window itself; nothing for scoring candidates one at a time."""
        return {"relations": "none" if (strategy or self.settings.strategy) == "pointwise" else "vectors"}

    def rank_lists(self, lists: Sequence[CandidateList], strategy: str | None = None) -> list[Ordering]:
        name = strategy or self.settings.strategy
        if name not in STRATEGIES:
            raise VitrineError(f"unknown rerank strategy {name!r} (choose from {', '.join(STRATEGIES)})")
        return STRATEGIES[name](self, list(lists))

    # --- model passes ------------------------------------------------------------------------

    def _model(self, kind: str):
        # Models are put in eval mode once (after training, on load); doing it per call costs
        # milliseconds of module walking on the serving path.
        model = self.runners.get(kind) or (self.listwise if kind == "listwise" else self.pointwise)
        if model is None:
            raise VitrineError(f"this reranker has no {kind} model; train it with 'vitrine train-reranker'")
        return model

    @torch.inference_mode()
    def chunk_scores(self, lists: Sequence[CandidateList]) -> list[dict[str, np.ndarray]]:
        """Per list: ``local (K,)``, ``null (chunks,)``, ``logits (K, 4)``, ``r (K,)``, ``chunks``, from one
        batched forward pass over every chunk of every list."""
        model = self._model("listwise")
        size = self.settings.chunk_size
        parts = [chunk_slices(len(found), size) for found in lists]
        local, null, logits = (np.zeros((0, size), np.float32), np.zeros(0, np.float32),
                               np.zeros((0, size, LEVELS), np.float32))
        if any(parts):
            result = model(*stack_lists(lists, size))
            local, null, logits = result.local.numpy(), result.null.numpy(), result.level_logits.numpy()
        out, row = [], 0
        for found, cut in zip(lists, parts):
            # A list's chunks are consecutive rows, each full but the last, padded at its end: flattened,
            # the rows give the list's candidates in order, then the last chunk's padding.
            rows, count = slice(row, row + len(cut)), len(found)
            row += len(cut)
            entry = {"local": local[rows].reshape(-1)[:count], "null": null[rows],
                     "logits": logits[rows].reshape(-1, LEVELS)[:count], "chunks": cut}
            entry["r"] = self.calibrator(entry["logits"]) if count else np.zeros(0)
            out.append(entry)
        return out

    @torch.inference_mode()
    def pointwise_logits(self, lists: Sequence[CandidateList]) -> list[np.ndarray]:
        model = self._model("pointwise")
        if not lists:
            return []
        query = torch.from_numpy(np.stack([found.query for found in lists]))
        width = max(len(found) for found in lists)
        items = np.zeros((len(lists), width, self.spec.item_dim), dtype=np.float32)
        for i, found in enumerate(lists):
            items[i, :len(found)] = found.items
        logits = model(query, torch.from_numpy(items)).numpy()
        return [logits[i, :len(found)] for i, found in enumerate(lists)]

    @torch.inference_mode()
    def window_scores(self, found: CandidateList, positions: np.ndarray) -> np.ndarray:
        """Local scores of the candidates at ``positions`` compared as one window."""
        model = self._model("listwise")
        similarity = None if found.similarity is None else found.similarity[np.ix_(positions, positions)]
        vectors = None if found.relation_vectors is None else found.relation_vectors[:, positions]
        sub = CandidateList(found.keys[positions], found.query, found.items[positions], found.retrieval[positions],
                            similarity=similarity, relation_vectors=vectors)
        return model(*stack_lists([sub], len(positions))).local[0].numpy()

    # --- saving ------------------------------------------------------------------------------

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        models = {}
        for kind, model in (("listwise", self.listwise), ("pointwise", self.pointwise)):
            if model is not None:
                tmp = folder / f".{kind}.safetensors.tmp"
                save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
                tmp.replace(folder / f"{kind}.safetensors")
                models[kind] = asdict(model.config)
        config = {"format": FORMAT, "spec": {"dim": self.spec.dim, "scalars": list(self.spec.scalars),
                                             "vectors": self.spec.vectors},
                  "models": models, "calibrator": self.calibrator.to_dict(), "settings": asdict(self.settings),
                  "embedding": self.embedding, **(extra or {})}
        if self.history is not None:
            self.history.save(folder)
        else:
            (folder / HISTORY_FILE).unlink(missing_ok=True)
        write_atomic(folder / "config.json", json.dumps(config, indent=2).encode())

    @classmethod
    def load(cls, folder: Path) -> "Reranker":
        folder = Path(folder)
        try:
            config = json.loads((folder / "config.json").read_text())
            if config.get("format") != FORMAT:
                raise ValueError(f"format {config.get('format')!r}, expected {FORMAT!r}")
            spec = FeatureSpec(int(config["spec"]["dim"]), tuple(config["spec"]["scalars"]),
                               bool(config["spec"].get("vectors", True)))
            models: dict[str, Any] = {}
            for kind, model_cls in (("listwise", ChunkListwiseModel), ("pointwise", PointwiseScorer)):
                if kind in config["models"]:
                    model = model_cls(ModelConfig(**config["models"][kind]))
                    model.load_state_dict(load_file(str(folder / f"{kind}.safetensors")))
                    models[kind] = model.eval()
            return cls(spec, models.get("listwise"), models.get("pointwise"), Calibrator(**config["calibrator"]),
                       RerankSettings(**config["settings"]), config.get("embedding", {}),
                       history=QueryHistory.load(folder))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            reason = " ".join(str(exc).split())  # torch's messages span lines; a user error is one line
            raise StoreError(f"{folder}: cannot load the reranker ({reason}); "
                             "train one with 'vitrine train-reranker'") from None


def stack_lists(lists: Sequence[CandidateList], size: int):
    """Every list cut into consecutive chunks of ``size`` (``chunk_slices``), stacked: ``(query (C, Fq),
    items (C, M, Fi), mask (C, M), similarity (C, M, M, R), vectors (C, R, M, D))`` tensors, R =
    ``len(RELATIONS)``, a list's chunks in consecutive rows. What relates the candidates comes as the lists
    carry it: ``vectors`` if they carry vectors (``similarity`` is then ``None``), else ``similarity``
    (``vectors`` ``None``; zeros for lists that carry neither). Padding slots (at the end of each list's last
    chunk) are masked out and relate to nothing."""
    counts = [-(-len(found) // size) for found in lists]
    total = sum(counts)
    item_dim = lists[0].items.shape[1] if lists else 0
    items = np.zeros((total * size, item_dim), dtype=np.float32)
    mask = np.zeros(total * size, dtype=bool)
    query = np.repeat(np.stack([found.query for found in lists]), counts, axis=0) if lists else np.zeros((0, 0))
    carry_vectors = [found.relation_vectors is not None for found in lists]
    if any(carry_vectors) and not all(carry_vectors):
        raise ValueError("some lists carry their candidates' vectors and some do not: build them alike")
    relations = _stacked_vectors(lists, counts, size) if any(carry_vectors) else _stacked_cosines(lists, counts, size)
    row = 0
    for found, count in zip(lists, counts):
        items[row * size:row * size + len(found)] = found.items
        mask[row * size:row * size + len(found)] = True
        row += count
    stacked = (torch.from_numpy(query.astype(np.float32, copy=False)),
               torch.from_numpy(items.reshape(total, size, item_dim)), torch.from_numpy(mask.reshape(total, size)))
    return (*stacked, None, relations) if any(carry_vectors) else (*stacked, relations, None)


def _stacked_vectors(lists: Sequence[CandidateList], counts: Sequence[int], size: int) -> torch.Tensor:
    """``(C, R, M, D)``: each chunk's candidates' vectors, zero for padding."""
    kinds, dim = lists[0].relation_vectors.shape[0], lists[0].relation_vectors.shape[2]
    vectors = np.zeros((sum(counts), kinds, size, dim), dtype=np.float32)
    row = 0
    for found, count in zip(lists, counts):
        source = found.relation_vectors
        if len(found) != count * size:  # only a short last chunk needs padding first (K = 50, M = 10 does not)
            source = np.zeros((kinds, count * size, dim), dtype=np.float32)
            source[:, :len(found)] = found.relation_vectors
        vectors[row:row + count] = source.reshape(kinds, count, size, dim).transpose(1, 0, 2, 3)
        row += count
    return torch.from_numpy(vectors)


def _stacked_cosines(lists: Sequence[CandidateList], counts: Sequence[int], size: int) -> torch.Tensor:
    """``(C, M, M, R)``: each chunk's block of its list's cosines, zero for padding (and lists without any)."""
    similarity = np.zeros((sum(counts), size, size, len(RELATIONS)), dtype=np.float32)
    row = 0
    for found, count in zip(lists, counts):
        if found.similarity is not None:
            for chunk, part in enumerate(chunk_slices(len(found), size)):
                width = part.stop - part.start
                similarity[row + chunk, :width, :width] = found.similarity[part, part]
        row += count
    return torch.from_numpy(similarity)


# --- strategies ------------------------------------------------------------------------------

def _sorted(scores: np.ndarray) -> Ordering:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return Ordering(order, np.asarray(scores, dtype=np.float32)[order])


def _pointwise(reranker: Reranker, lists: list[CandidateList]) -> list[Ordering]:
    logits = reranker.pointwise_logits(lists)
    return [_sorted(expected_gain(torch.from_numpy(row)).numpy()) for row in logits]


def _local(reranker: Reranker, lists: list[CandidateList]) -> list[Ordering]:
    return [_sorted(entry["local"]) for entry in reranker.chunk_scores(lists)]


def _listwise(reranker: Reranker, lists: list[CandidateList]) -> list[Ordering]:
    results = []
    for entry in reranker.chunk_scores(lists):
        anchored = entry["local"].copy()
        for chunk, part in enumerate(entry["chunks"]):
            anchored[part] -= entry["null"][chunk]
        results.append(_sorted(anchored))
    return results


def _absolute(reranker: Reranker, lists: list[CandidateList]) -> list[Ordering]:
    return [_sorted(entry["r"]) for entry in reranker.chunk_scores(lists)]


def _hybrid(reranker: Reranker, lists: list[CandidateList]) -> list[Ordering]:
    results = []
    for entry in reranker.chunk_scores(lists):
        order = merge_chunks(entry["local"], entry["r"], reranker.settings.chunk_size)
        results.append(Ordering(order, entry["r"][order].astype(np.float32)))
    return results


def _sliding(reranker: Reranker, lists: list[CandidateList]) -> list[Ordering]:
    settings = reranker.settings
    results = []
    for found in lists:
        order = sliding_window(len(found), lambda positions: reranker.window_scores(found, positions),
                               settings.chunk_size, settings.stride)
        # Window scores are local to each window; the final position is the only global statement.
        results.append(Ordering(order, np.arange(len(order), 0, -1, dtype=np.float32)))
    return results


STRATEGIES: dict[str, Callable[[Reranker, list[CandidateList]], list[Ordering]]] = {
    "pointwise": _pointwise, "local": _local, "listwise": _listwise, "absolute": _absolute,
    "hybrid": _hybrid, "sliding": _sliding,
}
