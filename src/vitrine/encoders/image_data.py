"""Decoding and resizing images in DataLoader workers while the model runs in the main process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vitrine.catalog.images import ImageInput, open_image


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to ``size``, centre-crop a square, scale to ``(x - mean) / std``."""

    size: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        width, height = image.size
        scale = self.size / min(width, height)
        resized = image.resize((max(self.size, round(width * scale)), max(self.size, round(height * scale))),
                               Image.BICUBIC)
        left = (resized.width - self.size) // 2
        top = (resized.height - self.size) // 2
        square = resized.crop((left, top, left + self.size, top + self.size))
        pixels = torch.from_numpy(np.asarray(square, dtype=np.float32).copy()).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std


class ImageDataset(Dataset):
    def __init__(self, images: Sequence[ImageInput], preprocess: Preprocess) -> None:
        self.images = images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocess(open_image(self.images[index]))


def image_batches(images: Sequence[ImageInput], preprocess: Preprocess, batch_size: int,
                  num_workers: int) -> Iterator[torch.Tensor]:
    """Batches of preprocessed pixels, decoded in ``num_workers`` processes when that pays off."""
    # Starting workers costs more than decoding a batch or two in-process.
    workers = num_workers if len(images) > 2 * batch_size else 0
    loader = DataLoader(ImageDataset(images, preprocess), batch_size=batch_size, num_workers=workers,
                        shuffle=False, persistent_workers=False)
    yield from loader
