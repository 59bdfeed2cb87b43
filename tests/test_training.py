"""Training on fixtures the test draws: the loss falls, checkpoints resume, the store switches over."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import vitrine
from conftest import CATALOG, draw_product
from vitrine.catalog import Store, ingest, load_products
from vitrine.catalog.product import Pair
from vitrine.config import Config, TrainingConfig
from vitrine.encoders import FeatureCache, load_image_encoder, load_text_encoder
from vitrine.errors import StoreError, VitrineError
from vitrine.training import ContrastiveTrainer, build_training_set, train_store
from vitrine.training.trainer import CHECKPOINT, tower_config


def shopper_photos(folder: Path, per_product: int = 3) -> list[Pair]:
    """Photos of each drawn product: other sizes, shades and backgrounds than the catalog shot."""
    pairs = []
    for product_id, _, _, shape, colour, _ in CATALOG:
        for i in range(per_product):
            shade = tuple(max(0, min(255, c + 12 * (i - 1))) for c in colour)
            photo = draw_product(folder / f"{product_id}-{i}.jpg", shape, shade, size=180 + 30 * i,
                                 background=(180 + 20 * i, 170, 160))
            pairs.append(Pair(product_id=product_id, query_image=str(photo), query_key=str(photo)))
        pairs.append(Pair(product_id=product_id, query_text=f"looking for a {shape} thing", query_key=shape))
    return pairs


@pytest.fixture(scope="module")
def encoders():
    return load_text_encoder("minilm"), load_image_encoder("efficientnet-lite0")


@pytest.fixture
def store(tmp_path: Path, catalog_file: Path) -> Store:
    store = Store.create(tmp_path / "store")
    ingest(store, load_products(catalog_file), progress=False)
    return store


def training_set(store: Store, pairs, encoders, config: TrainingConfig):
    products = [replace(p, images=tuple(str(store.resolve(i)) for i in p.images)) for p in store.catalog]
    return build_training_set(products, pairs, *encoders, FeatureCache(store.root / "cache.sqlite"), config,
                              progress=False)


@pytest.mark.parametrize("negatives", [{}, {"memory_bank": 16, "memory_max_age": 20},
                                       {"hard_negatives": 2, "hard_refresh": 2}])
def test_a_few_steps_lower_the_loss(store, tmp_path, encoders, negatives):
    config = replace(TrainingConfig(), epochs=12, batch_size=8, lr=3e-3, hidden=64, dim=32, matryoshka="16",
                     **negatives)
    data = training_set(store, shopper_photos(tmp_path / "photos"), encoders, config)
    assert len(data) == 4 * 4 + data.keyword_examples and data.keyword_examples > 0
    trainer = ContrastiveTrainer(data, config, tower_config(config, "minilm", "efficientnet-lite0", 384, 1280),
                                 tmp_path / "model", progress=False)
    result = trainer.fit()
    assert result.losses[-1] < 0.6 * result.losses[0]
    if negatives.get("memory_bank"):
        assert len(trainer.bank) > 0


def test_resume_continues_from_the_checkpoint(store, tmp_path, encoders):
    config = replace(TrainingConfig(), epochs=2, batch_size=8, hidden=32, dim=16, matryoshka="")
    data = training_set(store, shopper_photos(tmp_path / "photos", per_product=1), encoders, config)
    towers = tower_config(config, "minilm", "efficientnet-lite0", 384, 1280)
    first = ContrastiveTrainer(data, config, towers, tmp_path / "model", progress=False)
    first.fit()
    assert (tmp_path / "model" / CHECKPOINT).is_file()
    longer = replace(config, epochs=4)
    resumed = ContrastiveTrainer(data, longer, towers, tmp_path / "model", progress=False)
    result = resumed.fit(resume=True)
    assert result.epochs == 4 and result.steps == 4 * first.steps_per_epoch
    assert result.losses[:2] == first.history  # the first two epochs were not redone
    fresh = ContrastiveTrainer(data, longer, towers, tmp_path / "other", progress=False)
    fresh.fit()
    assert np.allclose(fresh.history, result.losses, rtol=1e-4)  # resuming is the same as not stopping


def test_train_store_switches_the_store_to_the_trained_model(store, tmp_path):
    engine = vitrine.open(store)
    engine.sync(progress=False)
    overrides = {"training.epochs": 15, "training.batch_size": 8, "training.hidden": 64, "training.lr": 3e-3}
    result = train_store(store, shopper_photos(tmp_path / "photos"), config=store.config(overrides), progress=False)
    assert result.losses[-1] < result.losses[0]
    model = store.models_dir / "default"
    for name in ("model.safetensors", "config.json", "loss.png", "training.json"):
        assert (model / name).is_file()
    assert store.config().embedding.kind == "trained"

    stale = vitrine.open(store)
    with pytest.raises(StoreError, match="--reembed"):
        stale.search(text="scarf")
    stale.sync(rebuild=True, progress=False)
    engine = vitrine.open(store)
    assert engine.embedder.describe()["kind"] == "trained" and engine.index.dim == 256
    photo = draw_product(tmp_path / "new-photo.jpg", "stripes", (50, 140, 70), size=210, background=(190, 170, 160))
    assert engine.search(image=photo, k=1)[0].product.id == "scarf"


def test_pairs_for_unknown_products_are_refused(store, encoders):
    with pytest.raises(VitrineError, match="catalog does not hold"):
        training_set(store, [Pair(product_id="ghost", query_text="boo")], encoders, TrainingConfig())


def test_held_out_products_are_not_trained_on(store, tmp_path):
    config = store.config({"training.epochs": 1, "training.hidden": 16, "training.dim": 16, "training.matryoshka": ""})
    train_store(store, shopper_photos(tmp_path / "photos", per_product=1), config=config, held_out={"cone"},
                progress=False)
    report = (store.models_dir / "default" / "training.json").read_text()
    assert '"products": 3' in report and '"cone"' in report
