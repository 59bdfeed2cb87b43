"""The hashed n-gram embedding on the text towers: hashing, the bag, training it, serving it."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import vitrine
from test_training import encoders, shopper_photos, store, training_set  # noqa: F401 (fixtures)
from vitrine.config import TrainingConfig
from vitrine.embedding import TowerConfig, TwoTowerModel
from vitrine.encoders.ngrams import NgramBatch, NgramHasher
from vitrine.errors import VitrineError
from vitrine.training import ContrastiveTrainer, train_store
from vitrine.training.trainer import tower_config


def test_hashing_is_stable_normalised_and_tells_sizes_apart():
    hasher = NgramHasher(2 ** 16)
    bags = hasher.transform(["Beras Premium 5 kg", "Beras Premium 5 kg", "Beras Premium 1 kg", None, ""])
    assert bags.shape == (5, 2 ** 16)
    assert (bags[0] != bags[1]).nnz == 0  # the same text always lands in the same buckets
    assert np.allclose(np.asarray(bags.multiply(bags).sum(axis=1)).ravel(), [1, 1, 1, 0, 0], atol=1e-6)
    assert (bags[0] != bags[2]).nnz > 0  # the single-character "5" and "1" are words too
    # Character trigrams let a spelling variant share most of its bag with the original.
    variants = hasher.transform(["kaos polos", "kaospolos", "sepatu lari"])
    overlap = (variants @ variants.T).toarray()
    assert overlap[0, 1] > 0.4 and overlap[0, 2] < overlap[0, 1]


def test_the_bag_is_the_weighted_sum_of_its_rows():
    hasher = NgramHasher(64, char_n=0)
    bags = hasher.transform(["red apple", "apple"])
    model = TwoTowerModel(TowerConfig(text_dim=6, image_dim=5, dim=4, hidden=8, ngram_buckets=64))
    torch.nn.init.normal_(model.ngrams.bag.weight)
    expected = torch.from_numpy(bags.toarray()) @ model.ngrams.bag.weight
    assert torch.allclose(model.ngrams(NgramBatch.from_csr(bags)), expected, atol=1e-6)


def test_idf_weights_rare_ngrams_up_by_hand():
    hasher = NgramHasher(2 ** 12, word_n=1, char_n=0)
    idf = hasher.fit_idf(["beras premium", "beras merah", "beras"])
    bucket = lambda word: hasher.transform([word]).indices[0]  # noqa: E731
    assert idf[bucket("beras")] == pytest.approx(1.0)  # in every text
    assert idf[bucket("premium")] == pytest.approx(np.log(4 / 2) + 1)  # in one of three
    plain, weighted = hasher.transform(["beras premium"]), hasher.transform(["beras premium"], idf)
    assert plain[0, bucket("premium")] == pytest.approx(plain[0, bucket("beras")])
    assert weighted[0, bucket("premium")] / weighted[0, bucket("beras")] == pytest.approx(np.log(2) + 1, rel=1e-5)
    assert np.asarray(weighted.multiply(weighted).sum()) == pytest.approx(1.0)


def test_a_model_keeps_its_idf_and_applies_it(tmp_path: Path):
    model = tiny(ngram_buckets=256, ngram_idf=True)
    idf = NgramHasher(256).fit_idf(["red apple", "red cup", "apple juice"])
    model.ngrams.idf.copy_(torch.from_numpy(idf))
    model.save(tmp_path / "m")
    loaded = TwoTowerModel.load(tmp_path / "m")
    assert torch.equal(loaded.ngrams.idf, torch.from_numpy(idf))
    batch, plain = loaded.ngram_batch(["red apple"]), tiny(ngram_buckets=256).ngram_batch(["red apple"])
    assert torch.equal(batch.ids, plain.ids) and not torch.allclose(batch.weights, plain.weights)
    assert tiny(ngram_buckets=256).ngrams.idf is None  # off by default: nothing extra saved


def tiny(**kwargs) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(TowerConfig(text_dim=6, image_dim=5, dim=4, hidden=8, **kwargs)).eval()


def test_an_untrained_ngram_embedding_leaves_the_text_towers_as_they_were():
    plain, with_ngrams = tiny(), tiny(ngram_buckets=256)
    texts = ["blue shirt", "green kettle 2 l"]
    text, image, yes, no = torch.randn(2, 6), torch.zeros(2, 5), torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    batch = with_ngrams.ngram_batch(texts)
    assert torch.allclose(plain.queries(text, image, yes, no), with_ngrams.queries(text, image, yes, no, batch))
    with pytest.raises(ValueError, match="ngram_batch"):
        with_ngrams.queries(text, image, yes, no)  # forgetting the texts' n-grams is an error, not a silent miss


def test_save_and_load_keep_the_ngram_table(tmp_path: Path):
    model = tiny(ngram_buckets=256)
    torch.nn.init.normal_(model.ngrams.bag.weight)
    model.save(tmp_path / "m")
    loaded = TwoTowerModel.load(tmp_path / "m")
    text, image, has = torch.randn(2, 6), torch.randn(2, 5), torch.ones(2, dtype=torch.bool)
    batch = model.ngram_batch(["one", "two words"])
    assert torch.equal(model.products(text, image, has, batch), loaded.products(text, image, has, batch))


def test_training_moves_only_the_rows_of_seen_ngrams_and_resumes(store, tmp_path, encoders):  # noqa: F811
    config = replace(TrainingConfig(), epochs=4, batch_size=8, lr=3e-3, hidden=32, dim=16, matryoshka="",
                     ngram_buckets=4096, ngram_idf=True)
    towers = tower_config(config, "minilm", "efficientnet-lite0", 384, 1280)
    data = training_set(store, shopper_photos(tmp_path / "photos", per_product=1), encoders, config,
                        ngrams=towers.ngram_hasher())
    assert data.product_ngrams.shape == (4, 4096) and data.query_ngrams.shape == (len(data), 4096)
    assert data.ngram_idf is not None and data.ngram_idf.max() > 1.0  # fitted on the four product texts
    ContrastiveTrainer(data, replace(config, epochs=2), towers, tmp_path / "model", progress=False).fit()
    trainer = ContrastiveTrainer(data, config, towers, tmp_path / "model", progress=False)
    assert torch.equal(trainer.model.ngrams.idf, torch.from_numpy(data.ngram_idf))
    result = trainer.fit(resume=True)
    fresh = ContrastiveTrainer(data, config, towers, tmp_path / "other", progress=False)
    fresh.fit()
    assert np.allclose(fresh.history, result.losses, rtol=1e-4)  # the sparse optimizer's state resumed too
    assert result.losses[-1] < result.losses[0]
    seen = np.unique(np.concatenate([data.product_ngrams.indices, data.query_ngrams.indices]))
    moved = trainer.model.ngrams.bag.weight.detach().abs().sum(dim=1).numpy() > 0
    assert moved[seen].mean() > 0.9 and not moved[np.setdiff1d(np.arange(4096), seen)].any()


def test_a_store_trained_with_ngrams_serves_them(store, tmp_path):  # noqa: F811
    overrides = {"training.epochs": 15, "training.batch_size": 8, "training.hidden": 64, "training.lr": 3e-3,
                 "training.ngram_buckets": 4096}
    train_store(store, shopper_photos(tmp_path / "photos"), config=store.config(overrides), progress=False)
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    engine = vitrine.open(store)
    model = engine.embedder.model
    assert model.ngrams is not None and bool(model.ngrams.bag.weight.abs().sum() > 0)
    hits = engine.search(text="looking for a stripes thing", k=1)
    assert hits[0].product.id == "scarf"


def test_ngrams_train_in_one_process_only(store, tmp_path):  # noqa: F811
    config = store.config({"training.nproc": 2, "training.ngram_buckets": 4096})
    with pytest.raises(VitrineError, match="one process"):
        train_store(store, shopper_photos(tmp_path / "photos", per_product=1), config=config, progress=False)


def test_cli_train_with_ngrams_saves_them_in_the_model(tmp_path, catalog_file):
    import json

    from typer.testing import CliRunner

    from conftest import write_jsonl
    from vitrine.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(tmp_path / "store"), str(catalog_file)]).exit_code == 0
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query_text": "red apple", "product_id": "apple"},
                                                    {"query_text": "coffee mug", "product_id": "mug"}])
    result = runner.invoke(app, ["train", str(tmp_path / "store"), "--data", str(pairs), "--epochs", "2",
                                 "--ngrams", "1024", "--name", "grams"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "store" / "models" / "grams" / "config.json").read_text())
    assert saved["ngram_buckets"] == 1024
