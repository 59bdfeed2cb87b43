"""Contrastive losses. Each is a small module; negatives and masks come from elsewhere.

``InfoNCE`` scores every query against a set of keys: its positive and whatever negatives the call
site gathered (the batch, a memory bank, other processes, mined hard negatives). Keys marked in
``ignore`` are false negatives (same product, same group, shared keywords, also relevant) and take
no part in the softmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCE(nn.Module):
    """Softmax cross-entropy over cosine logits with a (learnable) temperature."""

    def __init__(self, temperature: float = 0.05, learnable: bool = True) -> None:
        super().__init__()
        log_t = torch.tensor(float(temperature)).log()
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(min=0.005, max=1.0)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, positives: torch.Tensor,
                ignore: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``queries`` (B, D) and ``keys`` (N, D) unit rows; ``positives`` (B,) index into keys."""
        logits = queries @ keys.T / self.temperature
        if ignore is not None:
            keep = torch.zeros_like(ignore)
            keep[torch.arange(len(positives)), positives] = True
            logits = logits.masked_fill(ignore & ~keep, float("-inf"))
        losses = F.cross_entropy(logits, positives, reduction="none")
        if weights is None:
            return losses.mean()
        return (losses * weights).sum() / weights.sum().clamp(min=1e-8)


class SymmetricInfoNCE(nn.Module):
    """Query → product over all keys, plus product → query over the batch's queries (CLIP-style)."""

    def __init__(self, temperature: float = 0.05, learnable: bool = True) -> None:
        super().__init__()
        self.info_nce = InfoNCE(temperature, learnable)

    @property
    def temperature(self) -> torch.Tensor:
        return self.info_nce.temperature

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, ignore: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """The first ``len(queries)`` keys are the queries' own positives, in order."""
        batch = len(queries)
        diagonal = torch.arange(batch, device=queries.device)
        forward = self.info_nce(queries, keys, diagonal, ignore, weights)
        backward_ignore = None if ignore is None else ignore[:, :batch].T
        backward = self.info_nce(keys[:batch], queries, diagonal, backward_ignore, weights)
        return (forward + backward) / 2


class MatryoshkaLoss(nn.Module):
    """Apply a loss at several embedding prefixes (renormalised), so short prefixes work on their own."""

    def __init__(self, loss: nn.Module, dims: Sequence[int]) -> None:
        super().__init__()
        self.loss = loss
        self.dims = sorted(set(int(d) for d in dims))

    @property
    def temperature(self) -> torch.Tensor:
        return self.loss.temperature

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        full = queries.shape[1]
        dims = [d for d in self.dims if d < full] + [full]
        total = sum(self.loss(F.normalize(queries[:, :d], dim=-1), F.normalize(keys[:, :d], dim=-1), *args, **kwargs)
                    for d in dims)
        return total / len(dims)


def arcface_logits(cosines: torch.Tensor, targets: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """``scale * cos θ_j`` for every column, ``scale * cos(θ_y + m)`` at each row's target column.

    Where ``θ_y + m`` would pass π, cos(θ + m) stops decreasing, so (as in InsightFace) the target
    logit becomes ``cos θ_y - m sin(π - m)``: still monotonic in θ and still below ``cos θ_y``. Rows whose target is -1 (unassigned) get no margin.
    """
    rows = torch.nonzero(targets >= 0).squeeze(1)
    cos_y = cosines[rows, targets[rows]].clamp(-1 + 1e-7, 1 - 1e-7)
    sin_y = (1 - cos_y * cos_y).sqrt()
    with_margin = cos_y * math.cos(margin) - sin_y * math.sin(margin)
    past_pi = cos_y <= math.cos(math.pi - margin)
    with_margin = torch.where(past_pi, cos_y - math.sin(math.pi - margin) * margin, with_margin)
    logits = cosines.clone()
    logits[rows, targets[rows]] = with_margin
    return logits * scale


class ArcFace(nn.Module):
    """Additive angular margin softmax over the columns a call site chose (all prototypes or a sample).

    ``cosines`` (B, C) are cosines between unit embeddings and unit prototype rows; ``targets`` (B,)
    the target column of each row. Columns in ``ignore`` (B, C) take no part (e.g. prototypes outside
    a row's nearest set).
    """

    def __init__(self, margin: float = 0.2, temperature: float = 0.05) -> None:
        super().__init__()
        self.margin, self.scale = float(margin), 1.0 / float(temperature)

    def forward(self, cosines: torch.Tensor, targets: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
        if not bool((targets >= 0).any()):  # nothing to classify in this batch
            return cosines.sum() * 0.0
        logits = arcface_logits(cosines, targets, self.margin, self.scale)
        if ignore is not None:
            logits = logits.masked_fill(ignore, float("-inf"))
        return F.cross_entropy(logits, targets, ignore_index=-1)
