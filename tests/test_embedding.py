"""The zero-shot fusion's arithmetic, with stand-in backbones whose outputs we choose."""

import numpy as np
import pytest

from vitrine.catalog import Product
from vitrine.embedding import Query, ZeroShotEmbedder
from vitrine.encoders import ImageEncoder, TextEncoder, l2_normalize
from vitrine.errors import VitrineError


class LookupText(TextEncoder):
    name, dim = "lookup-text", 3

    def __init__(self, table):
        self.table = table

    def encode(self, texts, *, batch_size=32, progress=False):
        return l2_normalize(np.array([self.table[t] for t in texts], dtype=np.float32).reshape(-1, self.dim))


class LookupImage(ImageEncoder):
    name, dim = "lookup-image", 2

    def __init__(self, table):
        self.table = table

    def encode(self, images, *, batch_size=32, progress=False):
        return l2_normalize(np.array([self.table[str(i)] for i in images], dtype=np.float32).reshape(-1, self.dim))


TEXTS = {"Apple. Red.": [1, 0, 0], "Mug": [0, 1, 0], "apple": [1, 0, 0], "cup": [0, 1, 1]}
IMAGES = {"a.png": [1, 0], "b.png": [0, 1], "q.png": [1, 1]}


def embedder(weight=0.5):
    return ZeroShotEmbedder(lambda: LookupText(TEXTS), lambda: LookupImage(IMAGES), text_dim=3, image_dim=2,
                            image_weight=weight)


def test_product_vector_is_weighted_concatenation():
    vectors = embedder(0.64).encode_products([Product("1", "Apple", "Red.", images=("a.png",))])
    assert np.allclose(vectors[0], [0.8, 0, 0.6, 0, 0])
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0)


def test_several_images_average_and_missing_image_keeps_zero_block():
    vectors = embedder().encode_products([Product("1", "Mug", images=("a.png", "b.png")), Product("2", "Mug")])
    half = np.sqrt(0.5)
    assert np.allclose(vectors[0], [half * half, half * half, 0, half, 0])
    assert np.allclose(vectors[1], [0, 0, 0, half, 0])  # not inflated: comparable with vectors[0]


def test_single_modality_queries_fill_one_block():
    vectors = embedder().encode_queries([Query(text="apple"), Query(image="q.png"), Query(text="apple", image="q.png")])
    assert np.allclose(vectors[0], [0, 0, 1, 0, 0])
    assert np.allclose(vectors[1], [np.sqrt(0.5), np.sqrt(0.5), 0, 0, 0])
    assert np.allclose(vectors[2], [0.5, 0.5, np.sqrt(0.5), 0, 0])


def test_photo_query_ranking_ignores_text_and_vice_versa():
    model = embedder()
    products = model.encode_products([Product("1", "Apple", "Red.", images=("b.png",)),
                                      Product("2", "Mug", images=("a.png",))])
    photo = model.encode_queries([Query(image="a.png")])
    text = model.encode_queries([Query(text="apple")])
    assert np.argmax(products @ photo[0]) == 1
    assert np.argmax(products @ text[0]) == 0


def test_empty_query_and_bad_weight():
    with pytest.raises(VitrineError, match="needs text, an image, or both"):
        Query(text="   ")
    with pytest.raises(ValueError):
        embedder(weight=1.5)
