"""The zero-shot fusion's and the ensemble's arithmetic, with stand-in backbones whose outputs we choose."""

import numpy as np
import pytest

from vitrine.catalog import Product
from vitrine.embedding import EnsembleEmbedder, Query, ZeroShotEmbedder
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


PRODUCTS = [Product("1", "Apple", "Red.", images=("b.png",)), Product("2", "Mug", images=("a.png",)),
            Product("3", "Mug")]


def test_an_ensemble_scores_by_the_weighted_sum_of_its_members_scores():
    first, second = embedder(0.9), embedder(0.2)  # two members that disagree on how much images count
    ensemble = EnsembleEmbedder([(first, 0.3), (second, 0.7)])
    queries = [Query(text="cup"), Query(image="q.png"), Query(text="apple", image="a.png")]
    scores = ensemble.encode_queries(queries) @ ensemble.encode_products(PRODUCTS).T
    expected = sum(weight * member.encode_queries(queries) @ member.encode_products(PRODUCTS).T
                   for member, weight in ((first, 0.3), (second, 0.7)))
    assert ensemble.dim == first.dim + second.dim == 10
    assert np.allclose(scores, expected, atol=1e-6)
    assert np.allclose(np.linalg.norm(ensemble.encode_products(PRODUCTS[:2]), axis=1), 1.0)
    assert [member["weight"] for member in ensemble.describe()["members"]] == [0.3, 0.7]


def test_an_ensembles_modality_parts_are_unit_rows_and_zero_where_the_modality_is_missing():
    parts = EnsembleEmbedder([(embedder(0.9), 0.5), (embedder(0.2), 0.5)]).encode_product_parts(PRODUCTS)
    assert np.allclose(np.linalg.norm(parts["text"], axis=1), 1.0)
    assert np.allclose(np.linalg.norm(parts["image"][:2], axis=1), 1.0) and not parts["image"][2].any()


@pytest.mark.parametrize("weights", [(1.0,), (0.5, 0.6), (1.2, -0.2)])
def test_an_ensemble_needs_two_members_with_positive_weights_summing_to_one(weights):
    with pytest.raises(VitrineError, match="positive weights summing to 1"):
        EnsembleEmbedder([(embedder(), weight) for weight in weights])
