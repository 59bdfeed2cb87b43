"""Self-supervised visual tasks on cached backbone feature maps (the Taobao V+L paper's visual
pre-training), as extra losses beside the contrastive one. Both need spatial features, so both need a
model that fine-tunes the backbone's top blocks (``training.unfreeze_blocks`` > 0).

- ``MaskedPatchContrastive``: a view with random patches masked must pick out its own unmasked view
  among the other images' views (InfoNCE in the retrieval space, through the image projection).
- ``MaskedPatchRegression``: the variant it is said to beat: predict the masked patches' features
  (the unmasked view's head activations at those positions) with an L2 loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitrine.embedding.towers import TwoTowerModel
from vitrine.errors import VitrineError

VISUAL_TASKS = ("none", "masked-contrastive", "masked-regression")


def mask_patches(maps: torch.Tensor, ratio: float, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked maps, mask)``: each image loses ``ratio`` of its positions (at least one, never all).

    Masked positions are set to zero, the value a post-activation map holds where nothing fires.
    """
    batch, _, height, width = maps.shape
    cells = height * width
    count = min(cells - 1, max(1, round(ratio * cells)))
    order = torch.rand(batch, cells, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, cells, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    mask = mask.view(batch, height, width)
    return maps.masked_fill(mask.unsqueeze(1), 0.0), mask


class MaskedPatchContrastive(nn.Module):
    def __init__(self, ratio: float = 0.5, temperature: float = 0.1) -> None:
        super().__init__()
        self.ratio, self.temperature = ratio, temperature

    def forward(self, model: TwoTowerModel, images: torch.Tensor) -> torch.Tensor:
        top = _top(model)
        maps = top.maps(images)
        masked, _ = mask_patches(maps, self.ratio)
        full = F.normalize(model.product_image(top(images, augment=False)), dim=-1)
        partial = F.normalize(model.product_image(top(masked.flatten(1), augment=False)), dim=-1)
        logits = partial @ full.T / self.temperature
        target = torch.arange(len(images))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class MaskedPatchRegression(nn.Module):
    def __init__(self, dim: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.ratio = ratio
        self.predictor = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, model: TwoTowerModel, images: torch.Tensor) -> torch.Tensor:
        top = _top(model)
        maps = top.maps(images)
        masked, mask = mask_patches(maps, self.ratio)
        with torch.no_grad():
            target = top.spatial(maps).permute(0, 2, 3, 1)[mask]  # (masked positions, dim)
        predicted = self.predictor(top.spatial(masked).permute(0, 2, 3, 1)[mask])
        # Unit-length targets: the loss then measures direction, as retrieval does, not activation scale.
        return F.mse_loss(F.normalize(predicted, dim=-1), F.normalize(target, dim=-1), reduction="sum") / len(target)


def visual_task(name: str, model: TwoTowerModel, ratio: float) -> nn.Module | None:
    """The configured task, or None for ``"none"``."""
    if name not in VISUAL_TASKS:
        raise VitrineError(f"unknown visual task {name!r} (one of: {', '.join(VISUAL_TASKS)})")
    if name == "none":
        return None
    _top(model)
    if name == "masked-contrastive":
        return MaskedPatchContrastive(ratio)
    return MaskedPatchRegression(model.config.image_dim, ratio)


def _top(model: TwoTowerModel) -> nn.Module:
    if model.image_top is None:
        raise VitrineError("visual tasks need spatial features: set training.unfreeze_blocks to 1 or more")
    return model.image_top
