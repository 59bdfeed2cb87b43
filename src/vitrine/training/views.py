"""Extra views of the training photos: random crops, drawn once per photo and view, encoded once and cached.

Training on cached backbone features sees each photo exactly as it was shot, so a model fine-tuned on a few
dozen photos a product learns those shots. Crops at other scales and positions are the standard image
augmentation; here each is a fixed view (the same crop every run, keyed by the photo and the view's
number), so its features can be cached like the photo's own, and a training step picks one of a photo's
views at random. No mirror images: packaging carries text, which a mirror turns into other packaging
(mirroring Grocery's val photos at search time lowered R@1 from 0.831 to 0.811; BENCHMARKS.md).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vitrine.catalog.images import open_image


@dataclass(frozen=True)
class CropViews:
    """``count`` random crops per photo, each covering ``scale`` of its area (uniform) with an aspect ratio
    in ``ratio`` (log-uniform), as torchvision's RandomResizedCrop draws them."""

    count: int
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    seed: int = 0

    @property
    def signature(self) -> str:
        """What identifies a view's pixels (a cache key part)."""
        return f"crop{self.scale[0]:g}-{self.scale[1]:g}r{self.ratio[0]:.3f}-{self.ratio[1]:.3f}s{self.seed}"

    def box(self, key: str, view: int, width: int, height: int) -> tuple[int, int, int, int]:
        """The crop (left, top, right, bottom) of view ``view`` of the photo named ``key``: the same every time."""
        rng = np.random.default_rng([zlib.crc32(key.encode()), view, self.seed])
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = float(np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1]))))
            w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
            if 0 < w <= width and 0 < h <= height:
                left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
        return 0, 0, width, height  # an extreme aspect ratio: the whole photo

    def crop(self, image: Image.Image, key: str, view: int) -> Image.Image:
        return image.crop(self.box(key, view, *image.size))


class ViewImages(Sequence):
    """View ``view`` of each photo in ``paths``, cropped when read (for a DataLoader: holds only the paths)."""

    def __init__(self, paths: Sequence[str], views: CropViews, view: int) -> None:
        self.paths, self.views, self.view = list(paths), views, view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        path = self.paths[index]
        return self.views.crop(open_image(path), path, self.view)
