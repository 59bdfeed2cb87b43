import os
from pathlib import Path

import numpy as np

from conftest import draw_product
from vitrine.encoders import CachedImageEncoder, CachedTextEncoder, FeatureCache, ImageEncoder, TextEncoder


class Counting(ImageEncoder, TextEncoder):
    """Encodes anything to a vector of its length; counts what it was asked to encode."""

    name, dim = "counting", 3

    def __init__(self):
        self.seen = []

    def encode(self, items, *, batch_size=32, progress=False):
        self.seen.extend(items)
        return np.array([[len(str(item)), 1.0, 0.0] for item in items], dtype=np.float32)


def test_images_are_encoded_once_until_the_file_changes(tmp_path: Path):
    encoder = Counting()
    cached = CachedImageEncoder(encoder, FeatureCache(tmp_path / "cache.sqlite"))
    a = draw_product(tmp_path / "a.png", "circle", (1, 2, 3))
    b = draw_product(tmp_path / "b.png", "square", (1, 2, 3))
    first = cached.encode([a, b, a])
    assert len(encoder.seen) == 2  # a once, b once
    assert np.array_equal(cached.encode([b, a]), first[[1, 0]])
    assert len(encoder.seen) == 2
    os.utime(a, ns=(1, 1))  # a changed file is encoded again
    cached.encode([a])
    assert len(encoder.seen) == 3


def test_uploads_pass_through_and_the_cache_survives_reopening(tmp_path: Path):
    encoder = Counting()
    path = draw_product(tmp_path / "a.png", "circle", (1, 2, 3))
    CachedImageEncoder(encoder, FeatureCache(tmp_path / "c.sqlite")).encode([path])
    reopened = CachedImageEncoder(encoder, FeatureCache(tmp_path / "c.sqlite"))
    out = reopened.encode([path.read_bytes(), path])
    assert len(encoder.seen) == 2 and isinstance(encoder.seen[1], bytes)  # bytes were encoded, the path was not
    assert out.shape == (2, 3)


def test_texts(tmp_path: Path):
    encoder = Counting()
    cached = CachedTextEncoder(encoder, FeatureCache(tmp_path / "c.sqlite"))
    cached.encode(["oat milk", "soy milk"])
    cached.encode(["soy milk", "rice milk"])
    assert encoder.seen == ["oat milk", "soy milk", "rice milk"]
