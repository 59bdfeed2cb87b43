"""The reranking models in ONNX Runtime for serving (``rerank.runtime = "onnx"``, the default).

The chunk model is a dozen small matrix products over five chunks of twelve tokens; eager PyTorch
spends most of a query's time dispatching them one by one (0.7 ms against 0.2 ms in ONNX Runtime for
50 candidates on one core). Training keeps PyTorch; a served reranker is exported once, on first use,
under a digest of its weights (``vitrine.encoders.onnx_runtime``), and falls back to PyTorch with a
warning if the export fails. The wrappers take and return what the PyTorch models do, so the
strategies cannot tell them apart.
"""

from __future__ import annotations

import torch
from torch import nn

from vitrine.encoders.onnx_runtime import OnnxModel, try_onnx
from vitrine.rerank.models import ChunkListwiseModel, ChunkOutput, PointwiseScorer


class _PackedChunks(nn.Module):
    """The chunk model's three outputs in one tensor ``(C, M, 1 + 1 + 4)``: local, NULL, level logits. It
    takes the candidates' vectors (as served lists carry them), so the cosines are computed in the graph."""

    def __init__(self, model: ChunkListwiseModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, query: torch.Tensor, items: torch.Tensor, mask: torch.Tensor,
                vectors: torch.Tensor) -> torch.Tensor:
        out = self.model(query, items, mask, vectors=vectors)
        chunks, m = mask.shape
        return torch.cat([out.local.unsqueeze(-1), out.null[:, None, None].expand(chunks, m, 1), out.level_logits], -1)


class OnnxChunkModel:
    """``ChunkListwiseModel`` in ONNX Runtime: called like it, returns a ``ChunkOutput``. The graph reads the
    candidates' vectors; chunks that come with precomputed cosines instead (training lists) go to ``model``."""

    def __init__(self, session: OnnxModel, model: ChunkListwiseModel) -> None:
        self.session = session
        self.model = model

    def __call__(self, query: torch.Tensor, items: torch.Tensor, mask: torch.Tensor,
                 similarity: torch.Tensor | None = None, vectors: torch.Tensor | None = None) -> ChunkOutput:
        if similarity is not None and self.model.relation is not None:
            return self.model(query, items, mask, similarity)
        if vectors is None:  # nothing relates the candidates: zero cosines
            vectors = torch.zeros(mask.shape[0], self.model.config.relations, mask.shape[1], 1)
        # A model that is not relational has no vectors input in its graph; the session skips it.
        packed = self.session(query=query.numpy(), items=items.numpy(), mask=mask.numpy(), vectors=vectors.numpy())
        # Sliced in numpy, then shared with torch: indexing torch tensors costs more than the slices are worth.
        return ChunkOutput(*(torch.from_numpy(part) for part in (packed[..., 0], packed[:, 0, 1], packed[..., 2:])))


class OnnxPointwise:
    """``PointwiseScorer`` in ONNX Runtime: ``(query, items)`` → level logits, as a tensor."""

    def __init__(self, session: OnnxModel) -> None:
        self.session = session

    def __call__(self, query: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session(query=query.numpy(), items=items.numpy()))


def _example(model: nn.Module, chunks: int = 2, width: int = 3) -> dict[str, torch.Tensor]:
    config = model.config
    return {"query": torch.zeros(chunks, config.query_dim), "items": torch.zeros(chunks, width, config.item_dim)}


_DYNAMIC = {"query": {0: "chunks"}, "items": {0: "chunks", 1: "width"}, "mask": {0: "chunks", 1: "width"},
            "vectors": {0: "chunks", 2: "width", 3: "dim"}}


def onnx_chunk_model(model: ChunkListwiseModel, threads: int = 0) -> OnnxChunkModel | None:
    example = {**_example(model), "mask": torch.ones(2, 3, dtype=torch.bool),
               "vectors": torch.zeros(2, model.config.relations, 3, 4)}
    session = try_onnx(_PackedChunks(model).eval(), example, _DYNAMIC, "rerank-listwise", threads)
    return OnnxChunkModel(session, model) if session is not None else None


def onnx_pointwise(model: PointwiseScorer, threads: int = 0) -> OnnxPointwise | None:
    dynamic = {key: axes for key, axes in _DYNAMIC.items() if key in ("query", "items")}
    session = try_onnx(model.eval(), _example(model), dynamic, "rerank-pointwise", threads)
    return OnnxPointwise(session) if session is not None else None
