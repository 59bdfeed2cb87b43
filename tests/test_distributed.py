"""Training in two processes (torch DDP over gloo) on a synthetic training set built here."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from vitrine.config import TrainingConfig
from vitrine.embedding import TwoTowerModel
from vitrine.errors import VitrineError
from vitrine.training import ContrastiveTrainer, TrainingSet
from vitrine.training.distributed import shard_batches, train_distributed
from vitrine.training.trainer import CHECKPOINT, tower_config

TEXT_DIM, IMAGE_DIM = 16, 24


def synthetic_set(products: int = 12, photos: int = 5, seed: int = 0) -> TrainingSet:
    """Products with text and image features; each is searched by noisy photos and one noisy text query.
    The query keys are distinct, so a dev split can be held back."""
    rng = np.random.default_rng(seed)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    text, image = unit(rng.normal(size=(products, TEXT_DIM))), unit(rng.normal(size=(products, IMAGE_DIM)))
    positive = np.repeat(np.arange(products), photos + 1)
    is_photo = np.tile(np.arange(photos + 1) < photos, products)
    query_image = unit(image[positive] + 0.25 * rng.normal(size=(len(positive), IMAGE_DIM)))
    query_text = unit(text[positive] + 0.25 * rng.normal(size=(len(positive), TEXT_DIM)))
    query_image[~is_photo], query_text[is_photo] = 0, 0
    return TrainingSet(
        product_ids=[f"p{i}" for i in range(products)], product_text=text, product_image=image,
        product_has_image=np.ones(products, dtype=bool), equivalent=sp.identity(products, dtype=bool, format="csr"),
        query_text=query_text, query_image=query_image, query_has_text=~is_photo, query_has_image=is_photo,
        positive=positive, weight=np.ones(len(positive), dtype=np.float32),
        relevant=[np.zeros(0, dtype=np.int64)] * len(positive), query_keys=[f"q{i}" for i in range(len(positive))])


def small(**changes) -> TrainingConfig:
    return replace(TrainingConfig(), batch_size=24, lr=3e-3, hidden=32, dim=16, matryoshka="8", keyword_pairs=False,
                   **changes)


def test_shards_are_disjoint_equal_and_cover_every_batch():
    permutation = np.random.default_rng(1).permutation(50)
    shards = [shard_batches(permutation, steps=3, rank=rank, world=2) for rank in range(2)]
    assert all(len(batch) == 9 for rank in shards for batch in rank)  # 50 rows -> 3 steps x 2 ranks x 9
    for step in range(3):
        assert not set(shards[0][step]) & set(shards[1][step])
    covered = np.concatenate([batch for rank in shards for batch in rank])
    assert set(covered) == set(permutation) and len(covered) == 54  # four rows taken twice to even out


def test_two_processes_stay_in_sync_and_the_loss_falls(tmp_path):
    data = synthetic_set()
    config = small(epochs=8, memory_bank=48, hard_negatives=2, hard_refresh=3, dev_fraction=0.25, patience=8)
    towers = tower_config(config, "synthetic-text", "efficientnet-lite0", TEXT_DIM, IMAGE_DIM)
    run = train_distributed(data, config, towers, tmp_path / "model", 2, progress=False)
    assert len(run.digests) == 2 and run.digests[0] == run.digests[1]
    losses = run.result.losses
    assert len(losses) == run.result.epochs and losses[-1] < 0.6 * losses[0]
    assert (tmp_path / "model" / CHECKPOINT).is_file()
    model = TwoTowerModel.load(tmp_path / "model").eval()  # rank 0 saved it
    with torch.no_grad():
        queries = model.queries(*(torch.from_numpy(getattr(data, name)) for name in (
            "query_text", "query_image", "query_has_text", "query_has_image")))
        products = model.products(torch.from_numpy(data.product_text), torch.from_numpy(data.product_image),
                                  torch.from_numpy(data.product_has_image))
    accuracy = float(((queries @ products.T).argmax(dim=1).numpy() == data.positive).mean())
    assert accuracy > 0.5  # chance is 1/12


def test_two_processes_compute_the_single_process_step_over_the_global_batch(tmp_path):
    """No dropout, one-way InfoNCE, 72 rows = 3 steps x 2 ranks x 12: the shards of each global batch
    and DDP's averaged gradients reproduce one process training on whole batches."""
    data = synthetic_set()
    config = small(epochs=2, dropout=0.0, image_dropout=0.0, symmetric=False, dev_fraction=0.0)
    towers = tower_config(config, "synthetic-text", "efficientnet-lite0", TEXT_DIM, IMAGE_DIM)
    train_distributed(data, config, towers, tmp_path / "ddp", 2, progress=False)
    single = ContrastiveTrainer(data, config, towers, tmp_path / "single", progress=False)
    single.fit()
    together, alone = TwoTowerModel.load(tmp_path / "ddp").state_dict(), single.model.state_dict()
    assert together.keys() <= alone.keys()
    start = ContrastiveTrainer(data, config, towers, tmp_path / "start", progress=False).model.state_dict()
    moved = max(float((alone[name] - start[name]).abs().max()) for name in together)
    assert moved > 1e-2  # training changed the weights, so agreeing below means something
    for name, tensor in together.items():
        torch.testing.assert_close(tensor, alone[name], atol=2e-5, rtol=1e-4)


def test_one_process_is_not_a_distributed_run(tmp_path):
    config = small(epochs=1)
    towers = tower_config(config, "synthetic-text", "efficientnet-lite0", TEXT_DIM, IMAGE_DIM)
    with pytest.raises(VitrineError, match="at least 2 processes"):
        train_distributed(synthetic_set(), config, towers, tmp_path, 1)


def test_cli_refuses_zero_processes_in_one_line(tmp_path, catalog_file):
    from typer.testing import CliRunner

    from vitrine.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(tmp_path / "store"), str(catalog_file)]).exit_code == 0
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query_text": "red apple", "product_id": "apple"}\n')
    result = runner.invoke(app, ["train", str(tmp_path / "store"), "--data", str(pairs), "--nproc", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error:") and "--nproc must be at least 1" in result.output
