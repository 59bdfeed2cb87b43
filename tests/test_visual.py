"""Fine-tuning the backbone's top and the self-supervised visual tasks, on maps the tests make."""

import copy

import numpy as np
import pytest
import torch

from vitrine.config import TrainingConfig
from vitrine.embedding import TowerConfig, TwoTowerModel
from vitrine.encoders import load_image_top
from vitrine.errors import VitrineError
from vitrine.training.visual import MaskedPatchContrastive, MaskedPatchRegression, mask_patches, visual_task

SPLIT = "efficientnet-lite0@64/top1"  # 64 px input: 192 x 2 x 2 maps, quick on a CPU


@pytest.fixture(scope="module")
def top():
    return load_image_top(SPLIT)


def model_with_top(top) -> TwoTowerModel:
    config = TowerConfig(image_encoder=SPLIT, text_dim=8, image_dim=1280, dim=16, hidden=32, matryoshka=[16],
                         image_input_dim=192 * 4)
    return TwoTowerModel(config, image_top=top)


def test_mask_patches_hides_the_asked_share_and_zeroes_it():
    maps = torch.rand(5, 3, 4, 4) + 1.0
    masked, mask = mask_patches(maps, 0.5, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 4, 4) and (mask.sum(dim=(1, 2)) == 8).all()
    assert (masked.permute(0, 2, 3, 1)[mask] == 0).all() and (masked.permute(0, 2, 3, 1)[~mask] >= 1).all()
    assert (mask_patches(maps, 1.0)[1].sum(dim=(1, 2)) == 15).all()  # never all: something must remain
    assert (mask_patches(maps, 0.0)[1].sum(dim=(1, 2)) == 1).all()


@pytest.fixture(scope="module")
def drawn_maps() -> torch.Tensor:
    """The maps entering the top block for eight drawn scenes (coloured discs on coloured grounds)."""
    from PIL import Image, ImageDraw

    from vitrine.encoders import load_image_encoder

    rng = np.random.default_rng(0)
    images = []
    for _ in range(8):
        image = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = (int(v) for v in rng.integers(0, 48, 2))
            draw.ellipse([x, y, x + 16, y + 16], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        images.append(image)
    return torch.from_numpy(load_image_encoder(SPLIT).encode(images))


@pytest.mark.parametrize("task", ["masked-contrastive", "masked-regression"])
def test_visual_tasks_learn(top, drawn_maps, task):
    torch.manual_seed(0)
    model = model_with_top(copy.deepcopy(top))
    loss_fn = visual_task(task, model, 0.25)
    backbone = {id(p) for p in model.image_top.parameters()}
    rest = [p for p in [*model.parameters(), *loss_fn.parameters()] if id(p) not in backbone]
    optimizer = torch.optim.Adam([{"params": rest}, {"params": list(model.image_top.parameters()), "lr": 1e-4}],
                                 lr=1e-3)
    model.train()
    losses = []
    for _ in range(15):
        loss = loss_fn(model, drawn_maps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.5 * losses[0]


def test_visual_task_needs_a_trainable_top():
    frozen = TwoTowerModel(TowerConfig(text_dim=8, image_dim=4, dim=8, hidden=16, matryoshka=[8]))
    assert visual_task("none", frozen, 0.5) is None
    with pytest.raises(VitrineError, match="unfreeze_blocks"):
        visual_task("masked-contrastive", frozen, 0.5)
    with pytest.raises(VitrineError, match="unknown visual task 'jigsaw'"):
        visual_task("jigsaw", frozen, 0.5)


def test_model_with_a_trained_top_saves_and_loads_identically(top, tmp_path):
    torch.manual_seed(0)
    model = model_with_top(copy.deepcopy(top))
    with torch.no_grad():
        model.image_top.conv_head.weight.mul_(1.5)  # trained away from the pretrained weights
    model.eval()
    text, images = torch.rand(3, 8), torch.rand(3, 192 * 4)
    has = torch.tensor([True, True, False])
    before = model.products(text, images, has)
    model.save(tmp_path)
    loaded = TwoTowerModel.load(tmp_path)
    assert loaded.image_top is not None
    assert torch.allclose(loaded.products(text, images, has), before, atol=1e-6)
    assert torch.allclose(loaded.queries(text, images, has, has), model.queries(text, images, has, has), atol=1e-6)
