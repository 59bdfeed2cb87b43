"""The reranking models, small enough for a CPU: a pointwise scorer and the chunk listwise model.

Both read ``FeatureSpec`` layouts (``vitrine.rerank.features``). Inputs are standardised with
statistics fitted on the training lists and kept as buffers, so a saved model carries its own scaling.

With a *retrieval prior* (``ModelConfig.prior_column``), every score head is the sum of a learned
multiple of the candidate's standardised retrieval score and a correction whose last layer starts at
zero: an untrained model ranks exactly as the retriever did, and training moves away from that order
only where the training lists teach it to. Without it a randomly initialised head must rediscover
the retriever's order from a few thousand lists, and on small catalogs it never quite does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitrine.rerank.features import RELATIONS
from vitrine.rerank.levels import LEVELS


@dataclass
class ModelConfig:
    query_dim: int
    item_dim: int
    dim: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    prior_column: int | None = None
    """Item feature column holding the standardised retrieval score; ``None``: no retrieval prior."""
    relational: bool = False
    """Chunk model: add learned multiples (per block, head and kind of vector) of the cosines between two
    candidates' product vectors to the attention logit between them."""
    relations: int = len(RELATIONS)
    """How many kinds of candidate-candidate cosine the similarity input carries."""
    absolute_from_local: bool = False
    """Chunk model with a prior: the level logits start from the same pass's local score (not followed by
    gradients) instead of the retrieval score, so r ranks as the local scores do until trained otherwise."""


@dataclass
class ChunkOutput:
    local: torch.Tensor
    """``(B, M)`` within-chunk scores: comparable inside one chunk only."""
    null: torch.Tensor
    """``(B,)`` the NULL option's score ("no instance match in this chunk")."""
    level_logits: torch.Tensor
    """``(B, M, 4)`` absolute scorer: logits of the four relevance levels."""


class Standardise(nn.Module):
    """``(x − mean) / std`` with statistics fitted once on training features."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        flat = features.reshape(-1, features.shape[-1]).float()
        self.mean.copy_(flat.mean(dim=0))
        self.std.copy_(flat.std(dim=0).clamp(min=1e-4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


class RetrievalPrior(nn.Module):
    """``w · x[column]``: a learned multiple (one per output) of one raw item feature, added to a head."""

    def __init__(self, column: int, init: list[float]) -> None:
        super().__init__()
        self.column = column
        self.weight = nn.Parameter(torch.tensor(init))

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """``items (..., Fi)`` → ``(..., len(init))``."""
        return self.of(items[..., self.column])

    def of(self, scores: torch.Tensor) -> torch.Tensor:
        """The same learned multiples of other scores ``(...)`` → ``(..., len(init))``."""
        return scores[..., None] * self.weight


RELATION_RANGE = 10.0

# Where a prior is on, the level heads start as "P(instance match) rises with the retrieval score".
LEVEL_PRIOR_INIT = [1.0] + [0.0] * (LEVELS - 1)


def _start_at_zero(layer: nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


class Block(nn.Module):
    """A pre-norm transformer block (self-attention + MLP). Written out rather than
    ``nn.TransformerEncoderLayer``, whose per-call eligibility checks for its fast path walk every
    submodule and cost more than the maths at this size (chunks of 12 tokens, 64 wide)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, T, d)``; ``keep (B, T)`` True for tokens that may be attended to; ``bias (B, heads, T, T)``
        added to the attention logits."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = keep[:, None, None, :]
        if bias is not None:
            mask = bias.masked_fill(~mask, float("-inf"))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  dropout_p=self.dropout.p if self.training else 0.0)
        x = x + self.dropout(self.out(attended.transpose(1, 2).reshape(b, t, d)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class ChunkListwiseModel(nn.Module):
    """A transformer over ``[NULL, query, c_1..c_M]``: candidates attend to each other and to the query
    (local comparative reasoning), the NULL token is a learned "none of these" option.

    Heads: a local score per candidate and for NULL (trained with the pairwise and NULL losses), and the
    absolute scorer, an MLP on ``[z_query ‖ z_candidate]`` → 4 level logits, from the same forward pass.
    No position embedding: the order of candidates in a chunk carries no meaning beyond the retrieval
    rank, which is one of the features.

    *Relational* (``ModelConfig.relational``): the attention logit between two candidates gets learned
    multiples (per block and head, starting at zero) of the cosines between their fused, text and image
    vectors, so a candidate can gather evidence from the candidates that look like it, and a head can
    tell "same picture" from "same description", as k-reciprocal re-ranking does in re-identification;
    the scalar inputs alone say nothing about how candidates relate.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.query_norm = Standardise(config.query_dim)
        self.item_norm = Standardise(config.item_dim)
        self.query_in = nn.Linear(config.query_dim, d)
        self.item_in = nn.Sequential(nn.Linear(config.item_dim, d), nn.GELU(), nn.Linear(d, d))
        self.null = nn.Parameter(torch.randn(d) * 0.02)
        self.kind = nn.Embedding(3, d)  # NULL, query, candidate
        self.blocks = nn.ModuleList(Block(d, config.heads, config.dropout) for _ in range(config.layers))
        self.relation = (nn.Parameter(torch.zeros(config.layers, config.heads, config.relations))
                         if config.relational else None)
        self.out_norm = nn.LayerNorm(d)
        self.local_head = nn.Linear(d, 1)
        self.absolute_head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Dropout(config.dropout),
                                           nn.Linear(d, LEVELS))
        self.local_prior = self.level_prior = None
        if config.prior_column is not None:
            self.local_prior = RetrievalPrior(config.prior_column, [1.0])
            self.level_prior = RetrievalPrior(config.prior_column, LEVEL_PRIOR_INIT)
            _start_at_zero(self.local_head)
            _start_at_zero(self.absolute_head[-1])

    def forward(self, query: torch.Tensor, items: torch.Tensor, mask: torch.Tensor,
                similarity: torch.Tensor | None = None, vectors: torch.Tensor | None = None) -> ChunkOutput:
        """``query (B, Fq)``, ``items (B, M, Fi)``, ``mask (B, M)`` True for real candidates; what relates the
        candidates (read by a relational model only): ``similarity (B, M, M, relations)``, their cosines, or
        ``vectors (B, relations, M, D)``, their unit vectors, whose cosines the model then computes."""
        if vectors is not None and self.relation is not None:
            similarity = chunk_cosines(vectors)
        batch, m = mask.shape
        null = (self.null + self.kind.weight[0]).expand(batch, 1, -1)
        q = (self.query_in(self.query_norm(query)) + self.kind.weight[1]).unsqueeze(1)
        c = self.item_in(self.item_norm(items)) + self.kind.weight[2]
        z = torch.cat([null, q, c], dim=1)
        keep = torch.cat([torch.ones(batch, 2, dtype=torch.bool, device=mask.device), mask], dim=1)
        # Candidate-candidate entries only: NULL and the query relate to nothing by product similarity.
        pairs = F.pad(similarity, (0, 0, 2, 0, 2, 0)) if self.relation is not None and similarity is not None \
            else None
        for layer, block in enumerate(self.blocks):
            z = block(z, keep, None if pairs is None else self.relation_bias(pairs, layer))
        z = self.out_norm(z)
        z_null, z_query, z_items = z[:, 0], z[:, 1], z[:, 2:]
        local = self.local_head(z_items).squeeze(-1)
        null_score = self.local_head(z_null).squeeze(-1)
        pair = torch.cat([z_query.unsqueeze(1).expand(-1, m, -1), z_items], dim=-1)
        levels = self.absolute_head(pair)
        if self.local_prior is not None:
            local = local + self.local_prior(items).squeeze(-1)
            levels = levels + (self.level_prior.of(local.masked_fill(~mask, 0.0).detach())
                               if self.config.absolute_from_local else self.level_prior(items))
        return ChunkOutput(local.masked_fill(~mask, float("-inf")), null_score, levels)

    def relation_bias(self, pairs: torch.Tensor, layer: int) -> torch.Tensor:
        """``pairs (B, T, T, relations)`` → ``(B, heads, T, T)`` attention-logit bias of one block. The
        multiples are stored a tenth of their size: cosines lie in [-1, 1] and matter as logits only in the
        tens, which a weight starting at zero would take thousands of steps to reach at the models' learning
        rate."""
        return (pairs @ (RELATION_RANGE * self.relation[layer]).T).permute(0, 3, 1, 2)


def chunk_cosines(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors (B, relations, M, D)`` → ``(B, M, M, relations)``: the cosines between a chunk's candidates,
    per kind of vector. In the served graph this is one batched product: cheaper than handing it a matrix
    computed outside."""
    return (vectors @ vectors.transpose(-1, -2)).permute(0, 2, 3, 1)


class PointwiseScorer(nn.Module):
    """One candidate at a time: an MLP on ``[query ‖ candidate]`` → 4 level logits (cross-entropy)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.query_norm = Standardise(config.query_dim)
        self.item_norm = Standardise(config.item_dim)
        self.net = nn.Sequential(nn.Linear(config.query_dim + config.item_dim, 2 * d), nn.GELU(),
                                 nn.Dropout(config.dropout), nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, LEVELS))
        self.level_prior = None
        if config.prior_column is not None:
            self.level_prior = RetrievalPrior(config.prior_column, LEVEL_PRIOR_INIT)
            _start_at_zero(self.net[-1])

    def forward(self, query: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``query (B, Fq)``, ``items (B, M, Fi)`` → ``(B, M, 4)`` level logits."""
        q = self.query_norm(query).unsqueeze(1).expand(-1, items.shape[1], -1)
        logits = self.net(torch.cat([q, self.item_norm(items)], dim=-1))
        return logits if self.level_prior is None else logits + self.level_prior(items)


def expected_gain(level_logits: torch.Tensor) -> torch.Tensor:
    """``Σ_l P(l)·(3 − l)``: the pointwise ranking score (the expected NDCG gain of a candidate)."""
    gains = torch.arange(LEVELS - 1, -1, -1, dtype=level_logits.dtype, device=level_logits.device)
    return (level_logits.softmax(dim=-1) * gains).sum(dim=-1)
