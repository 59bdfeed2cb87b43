import math

import pytest
import torch
import torch.nn.functional as F

from vitrine.training.losses import InfoNCE, MatryoshkaLoss, SymmetricInfoNCE


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_info_nce_by_hand():
    queries = unit([1.0, 0.0], [0.0, 1.0])
    keys = unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    loss = InfoNCE(temperature=1.0, learnable=False)(queries, keys, torch.tensor([0, 1]))
    c = 1 / math.sqrt(2)
    # each query: positive logit 1, other basis key 0, diagonal key 1/sqrt(2)
    expected = -math.log(math.e / (math.e + 1 + math.exp(c)))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_ignored_keys_leave_the_softmax_but_the_positive_stays():
    queries = unit([1.0, 0.0])
    keys = unit([1.0, 0.0], [1.0, 0.1])
    loss = InfoNCE(temperature=0.1, learnable=False)
    plain = float(loss(queries, keys, torch.tensor([0])))
    masked = float(loss(queries, keys, torch.tensor([0]), ignore=torch.tensor([[True, True]])))
    assert plain > 0.5
    assert masked == pytest.approx(0.0, abs=1e-6)  # only the positive is left


def test_weights_scale_examples():
    queries = unit([1.0, 0.0], [0.0, 1.0])
    keys = unit([1.0, 0.0], [1.0, 0.0])  # second query's positive is far: a large loss
    loss = InfoNCE(temperature=0.5, learnable=False)
    per_example = [float(loss(queries[i:i + 1], keys, torch.tensor([i]))) for i in range(2)]
    weighted = float(loss(queries, keys, torch.tensor([0, 1]), weights=torch.tensor([3.0, 1.0])))
    assert weighted == pytest.approx((3 * per_example[0] + per_example[1]) / 4, rel=1e-5)


def test_temperature_is_learnable():
    loss = InfoNCE(temperature=0.07)
    assert loss.log_temperature.requires_grad
    assert float(loss.temperature.detach()) == pytest.approx(0.07)
    assert not InfoNCE(0.07, learnable=False).log_temperature.requires_grad


def test_symmetric_averages_both_directions():
    queries = unit([1.0, 0.2], [0.1, 1.0], [1.0, 1.0])
    keys = unit([1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [0.3, 1.0])
    base = InfoNCE(1.0, learnable=False)
    forward = base(queries, keys, torch.arange(3))
    backward = base(keys[:3], queries, torch.arange(3))
    assert float(SymmetricInfoNCE(1.0, learnable=False)(queries, keys)) == pytest.approx(float(forward + backward) / 2)


def test_matryoshka_averages_prefix_losses():
    torch.manual_seed(0)
    queries, keys = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    base = InfoNCE(0.5, learnable=False)
    expected = sum(float(base(F.normalize(queries[:, :d], dim=-1), F.normalize(keys[:, :d], dim=-1), torch.arange(4)))
                   for d in (2, 4, 8)) / 3
    assert float(MatryoshkaLoss(base, [2, 4])(queries, keys, torch.arange(4))) == pytest.approx(expected, rel=1e-5)
