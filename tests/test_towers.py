from pathlib import Path

import pytest
import torch

from vitrine.embedding import TowerConfig, TwoTowerModel


def small(**kwargs) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(TowerConfig(text_dim=6, image_dim=5, dim=4, hidden=8, **kwargs)).eval()


def test_gate_weights_are_per_product_and_sum_to_one():
    model = small()
    text, image = torch.randn(3, 6), torch.randn(3, 5)
    weights = model.modal_weights(text, image, torch.tensor([True, True, False]))
    assert torch.allclose(weights.sum(dim=1), torch.ones(3))
    assert not torch.allclose(weights[0], weights[1])  # a prediction per product, not a constant
    assert weights[2].tolist() == [0.0, 1.0]  # no image: all weight on the title


def test_without_gate_the_blend_is_fixed():
    model = small(modal_gate=False)
    weights = model.modal_weights(torch.randn(2, 6), torch.randn(2, 5), torch.tensor([True, False]))
    assert weights.tolist() == [[0.5, 0.5], [0.0, 1.0]]


def test_outputs_are_unit_vectors_and_queries_use_their_own_text_tower():
    model = small()
    products = model.products(torch.randn(4, 6), torch.randn(4, 5), torch.ones(4, dtype=torch.bool))
    assert torch.allclose(products.norm(dim=1), torch.ones(4), atol=1e-5)
    text = torch.randn(2, 6)
    as_query = model.queries(text, torch.zeros(2, 5), torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool))
    as_title = model.products(text, torch.zeros(2, 5), torch.zeros(2, dtype=torch.bool))
    assert not torch.allclose(as_query, as_title)
    assert model.query_image is model.product_image


def test_save_and_load_give_identical_embeddings(tmp_path: Path):
    model = small()
    text, image = torch.randn(3, 6), torch.randn(3, 5)
    has = torch.ones(3, dtype=torch.bool)
    model.save(tmp_path / "m")
    loaded = TwoTowerModel.load(tmp_path / "m")
    assert torch.equal(model.products(text, image, has), loaded.products(text, image, has))
    assert torch.equal(model.queries(text, image, has, has), loaded.queries(text, image, has, has))
    assert loaded.config == model.config


def test_without_an_image_projection_photos_are_their_own_features(tmp_path: Path):
    torch.manual_seed(0)
    model = TwoTowerModel(TowerConfig(text_dim=6, image_dim=5, dim=5, hidden=8, image_projection="none")).eval()
    image = torch.randn(3, 5)
    photo_only = model.queries(torch.zeros(3, 6), image, torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
    assert torch.allclose(photo_only, torch.nn.functional.normalize(image, dim=1))
    model.start_from_features(torch.randn(8, 6), torch.randn(8, 5))  # only the text towers start from PCA
    assert torch.allclose(model.queries(torch.zeros(3, 6), image, torch.zeros(3, dtype=torch.bool),
                                        torch.ones(3, dtype=torch.bool)), photo_only)
    model.save(tmp_path / "m")
    loaded = TwoTowerModel.load(tmp_path / "m")
    text, has = torch.randn(3, 6), torch.ones(3, dtype=torch.bool)
    assert torch.equal(model.products(text, image, has), loaded.products(text, image, has))
    with pytest.raises(ValueError, match=r"dim must be image_dim \(5\), not 4"):
        TowerConfig(text_dim=6, image_dim=5, dim=4, image_projection="none")
