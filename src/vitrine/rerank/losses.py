"""Listwise losses of Pailitao-VL's chunk reranker, as small composable functions.

Shapes: ``scores`` and ``levels`` are ``(B, M)`` (B chunks of M candidates), ``mask`` is ``(B, M)``
True where a candidate is real (the last chunk of a list may be padded), ``null`` is ``(B,)``.
Levels are 0 (instance match) to 3 (irrelevant): lower is better.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_discordant_loss(scores: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor | None = None,
                             tau: float = 1.0) -> torch.Tensor:
    """``Σ w_ij log(1 + exp(-(s_i - s_j)/τ)) / Σ w_ij`` over pairs where i is better than j (level_i < level_j),
    weighted by the label gap ``w_ij = level_j - level_i``. A chunk whose items all share one level adds
    nothing (there is no order to learn in it); with no ordered pair at all the loss is 0."""
    mask = torch.ones_like(levels, dtype=torch.bool) if mask is None else mask
    gap = (levels[:, None, :] - levels[:, :, None]).float()  # [b, i, j] = level_j - level_i
    valid = (gap > 0) & mask[:, :, None] & mask[:, None, :]
    weights = gap * valid
    margins = (scores[:, :, None] - scores[:, None, :]) / tau
    total = weights.sum()
    if total == 0:
        return scores.sum() * 0.0  # keeps the graph (and its device) without moving anything
    return (weights * F.softplus(-margins)).sum() / total


def null_loss(scores: torch.Tensor, null: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor | None = None,
              tau: float = 1.0) -> torch.Tensor:
    """Instance matches above the NULL option, everything else below it:
    ``log(1 + exp(-(s_i - s_null)/τ))`` for level 0, ``log(1 + exp(-(s_null - s_i)/τ))`` otherwise, averaged
    over real candidates. NULL is the chunk's "none of these is the product" answer, which gives local
    scores a shared zero point across chunks and queries."""
    mask = torch.ones_like(levels, dtype=torch.bool) if mask is None else mask
    sign = torch.where(levels == 0, 1.0, -1.0)
    losses = F.softplus(-sign * (scores - null[:, None]) / tau)
    count = mask.sum()
    if count == 0:
        return scores.sum() * 0.0
    return (losses * mask).sum() / count


def level_cross_entropy(logits: torch.Tensor, levels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``(..., 4)`` level logits against levels, over real candidates (absolute scorer, pointwise)."""
    flat_logits, flat_levels = logits.reshape(-1, logits.shape[-1]), levels.reshape(-1)
    if mask is not None:
        keep = mask.reshape(-1)
        flat_logits, flat_levels = flat_logits[keep], flat_levels[keep]
    if len(flat_levels) == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(flat_logits, flat_levels.long())
