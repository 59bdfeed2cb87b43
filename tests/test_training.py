"""Training on fixtures the test draws: the loss falls, checkpoints resume, the store switches over."""

import json
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
from vitrine.encoders.sentence_transformer import SentenceTransformerEncoder, SplitSentenceEncoder
from vitrine.errors import StoreError, VitrineError
from vitrine.training import ContrastiveTrainer, build_training_set, train_store
from vitrine.training.trainer import CHECKPOINT, tower_config
from vitrine.embedding import TwoTowerModel
from vitrine.embedding.base import Query


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


def training_set(store: Store, pairs, encoders, config: TrainingConfig, ngrams=None):
    products = [replace(p, images=tuple(str(store.resolve(i)) for i in p.images)) for p in store.catalog]
    return build_training_set(products, pairs, *encoders, FeatureCache(store.root / "cache.sqlite"), config,
                              ngrams=ngrams, ngram_idf=config.ngram_idf, progress=False)


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


def recorded_rates(trainer: ContrastiveTrainer) -> list[float]:
    """The rate of the trainer's first parameter group at every optimizer step from now on."""
    rates, step = [], trainer.optimizer.step

    def recording(*args, **kwargs):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording
    return rates


def test_a_cosine_schedule_runs_the_rate_down_to_zero_keeps_the_end_and_resumes_in_step(store, tmp_path, encoders):
    config = replace(TrainingConfig(), epochs=4, batch_size=8, hidden=32, dim=16, matryoshka="", lr=2e-3,
                     lr_schedule="cosine", patience=1, dev_fraction=0.2)
    data = training_set(store, shopper_photos(tmp_path / "photos", per_product=5), encoders, config)
    towers = tower_config(config, "minilm", "efficientnet-lite0", 384, 1280)
    fresh = ContrastiveTrainer(data, config, towers, tmp_path / "fresh", progress=False)
    rates = recorded_rates(fresh)
    run = fresh.fit()
    assert run.epochs == 4 and run.best_epoch == 4 and len(run.dev_scores) == 4  # no early stop, the last weights
    total = 4 * fresh.steps_per_epoch
    assert total > 4 and len(rates) == total
    assert np.allclose(rates, [1e-3 * (1 + np.cos(np.pi * s / total)) for s in range(total)])
    assert rates[0] == 2e-3 and 0 < rates[-1] < 0.05 * 2e-3 and np.all(np.diff(rates) < 0)

    killed = ContrastiveTrainer(data, config, towers, tmp_path / "killed", progress=False)
    save = killed.save_checkpoint

    def save_then_die():
        save()
        if killed.epoch == 2:
            raise KeyboardInterrupt

    killed.save_checkpoint = save_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = ContrastiveTrainer(data, config, towers, tmp_path / "killed", progress=False)
    later = recorded_rates(resumed)
    result = resumed.fit(resume=True)
    assert np.allclose(later, rates[total // 2:])  # the schedule goes on from the step it stood at
    assert np.allclose(result.losses, fresh.history, rtol=1e-4)


def test_an_unknown_schedule_is_refused_before_training(store, tmp_path):
    with pytest.raises(VitrineError, match="lr_schedule 'linear'"):
        train_store(store, shopper_photos(tmp_path / "photos", per_product=1),
                    config=store.config({"training.lr_schedule": "linear"}), progress=False)


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
    pairs = [Pair(product_id="ghost", query_text="boo"), Pair(product_id="ghost", query_text="spooky")]
    with pytest.raises(VitrineError, match="does not hold .1 ids; first: 'ghost'"):
        training_set(store, pairs, encoders, TrainingConfig())


def test_held_out_products_are_not_trained_on(store, tmp_path):
    config = store.config({"training.epochs": 1, "training.hidden": 16, "training.dim": 16, "training.matryoshka": ""})
    train_store(store, shopper_photos(tmp_path / "photos", per_product=1), config=config, held_out={"cone"},
                progress=False)
    report = (store.models_dir / "default" / "training.json").read_text()
    assert '"products": 3' in report and '"cone"' in report
    listed = (store.models_dir / "default" / "trained_products.txt").read_text().split()
    assert listed == ["apple", "mug", "scarf"]

    from vitrine.catalog import LabelledQuery
    from vitrine.evaluation import evaluate

    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    assert engine.trained_products() == {"apple", "mug", "scarf"}
    queries = [LabelledQuery({"cone": 1}, text="traffic cone", where="q1"),
               LabelledQuery({"scarf": 1}, text="scarf", where="q2"),
               LabelledQuery({"mug": 1}, text="mug", where="q3")]
    segments = evaluate(engine, queries, progress=False).segments
    assert {name: part["queries"] for name, part in segments.items()} == {"trained on": 2, "never trained on": 1}


def synthetic_set(queries: int = 30, products: int = 10, seed: int = 0):
    """Random features with a learnable signal: each query is its product's text feature plus noise."""
    import scipy.sparse as sp

    from vitrine.training.data import TrainingSet

    rng = np.random.default_rng(seed)
    text = rng.normal(size=(products, 8)).astype(np.float32)
    positive = np.arange(queries) % products
    query_text = (text[positive] + 0.5 * rng.normal(size=(queries, 8))).astype(np.float32)
    keys = [f"q{i}" for i in range(queries)] + ["keyword:x"] * 5
    positive = np.concatenate([positive, np.zeros(5, dtype=np.int64)])
    query_text = np.concatenate([query_text, np.repeat(text[:1], 5, axis=0)])
    n = len(keys)
    return TrainingSet(
        product_ids=[f"p{i}" for i in range(products)], product_text=text,
        product_image=np.zeros((products, 4), np.float32), product_has_image=np.zeros(products, bool),
        equivalent=sp.identity(products, dtype=bool, format="csr"), query_text=query_text,
        query_image=np.zeros((n, 4), np.float32), query_has_text=np.ones(n, bool), query_has_image=np.zeros(n, bool),
        positive=positive, weight=np.ones(n, np.float32), relevant=[np.zeros(0, np.int64)] * n, query_keys=keys)


def test_dev_split_holds_back_whole_queries_but_no_keyword_examples():
    from vitrine.training.trainer import dev_split

    data = synthetic_set()
    train, dev = dev_split(data, 0.2, seed=0)
    assert len(dev) == 6 and len(train) == len(data) - 6
    assert not {data.query_keys[i] for i in dev} & {data.query_keys[i] for i in train}
    assert all(not data.query_keys[i].startswith("keyword:") for i in dev)
    assert len(dev_split(synthetic_set(queries=10), 0.2, seed=0)[1]) == 0  # too few queries: no dev split


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    import torch

    from vitrine.embedding import TowerConfig

    data = synthetic_set(queries=40)
    config = replace(TrainingConfig(), epochs=40, batch_size=8, lr=3e-2, patience=2, dev_fraction=0.25,
                     matryoshka="", keyword_pairs=False)
    trainer = ContrastiveTrainer(data, config, TowerConfig(text_dim=8, image_dim=4, dim=8, hidden=16,
                                                           matryoshka=[8]), tmp_path, progress=False)
    result = trainer.fit()
    assert len(result.dev_scores) == result.epochs
    assert result.epochs < 40  # patience ran out
    assert result.best_epoch == int(np.argmax(result.dev_scores)) + 1
    assert result.epochs - result.best_epoch == 2
    assert trainer.dev_mrr() == pytest.approx(max(result.dev_scores), abs=1e-6)  # the best weights are back
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(), trainer.best[2].values()))


@pytest.mark.parametrize("visual", ["none", "masked-contrastive"])
def test_fine_tuning_the_backbone_top_lowers_the_loss(store, tmp_path, visual):
    overrides = {"training.epochs": 10, "training.batch_size": 8, "training.hidden": 64, "training.lr": 3e-3,
                 "training.unfreeze_blocks": 1, "training.visual_task": visual, "encoders.image": "efficientnet-lite0@96"}
    config = store.config(overrides)
    result = train_store(store, shopper_photos(tmp_path / "photos"), config=config, progress=False)
    assert result.losses[-1] < 0.8 * result.losses[0]
    saved = TwoTowerModel.load(store.models_dir / "default")
    assert saved.config.image_encoder == "efficientnet-lite0@96/top1" and saved.image_top is not None
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    photo = draw_product(tmp_path / "new-photo.jpg", "stripes", (50, 140, 70), size=210, background=(190, 170, 160))
    assert engine.search(image=photo, k=1)[0].product.id == "scarf"


def test_fine_tuning_the_text_model_top_layer(store, tmp_path, monkeypatch):
    import torch

    texts = [Pair(product_id=pid, query_text=text, query_key=text) for pid, text in [
        ("scarf", "warm winter scarf"), ("scarf", "striped wool neck warmer"), ("apple", "fresh red apple"),
        ("apple", "crisp fruit for lunch"), ("cone", "traffic cone orange"), ("cone", "road safety marker")]]
    overrides = {"training.epochs": 12, "training.batch_size": 4, "training.hidden": 32, "training.lr": 3e-3,
                 "training.unfreeze_text_layers": 1, "training.dev_fraction": 0.0, "training.keyword_pairs": False}
    pretrained = load_text_encoder("minilm/top1").top().state_dict()
    result = train_store(store, texts + shopper_photos(tmp_path / "photos", per_product=1),
                         config=store.config(overrides), progress=False)
    assert result.losses[-1] < 0.8 * result.losses[0]
    saved = TwoTowerModel.load(store.models_dir / "default")
    assert saved.config.text_encoder == "minilm/top1" and saved.text_top is not None
    assert saved.config.text_input_dim == 48 * 385 and saved.config.text_dim == 384
    moved = [not torch.equal(saved.text_top.state_dict()[name], value) for name, value in pretrained.items()]
    assert any(moved)  # the layer itself trained, not only the projections on top of it
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    assert engine.embedder.describe()["text_encoder"] == "minilm/top1"
    assert engine.search(text="warm winter scarf", k=1)[0].product.id == "scarf"
    # Served vectors equal the model run by hand on the split encoder's token states.
    states = load_text_encoder("minilm/top1").encode(["fresh red apple"])
    text_features = torch.from_numpy(states)
    with torch.inference_mode():
        by_hand = saved.queries(text_features, torch.zeros(1, saved.config.image_input_width),
                                torch.ones(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool))
    served = engine.embedder.encode_queries([Query(text="fresh red apple")])
    assert np.allclose(served, torch.nn.functional.normalize(by_hand, dim=-1).numpy(), atol=1e-5)

    # Beside the zero-shot vectors, MiniLM's frozen layers run once per text query: the zero-shot member's
    # vector is MiniLM's own, computed from the towers' token states through the pretrained top layer.
    store.config({"embedding.zero_shot_weight": 0.5}).save(store.config_path)
    ensemble = vitrine.open(store)
    ensemble.sync(rebuild=True, progress=False)
    zero_shot = ensemble.embedder.members[1]
    minilm = load_text_encoder("minilm").encode(["fresh red apple"])[0]
    vector = zero_shot.encode_queries([Query(text="fresh red apple")])[0]
    assert np.allclose(vector[-len(minilm):], minilm, atol=1e-5) and not vector[:-len(minilm)].any()
    runs = []
    for encoder in (SplitSentenceEncoder, SentenceTransformerEncoder):
        monkeypatch.setattr(encoder, "encode", lambda self, texts, run=encoder.encode, **kw:
                            runs.append((self.name, list(texts))) or run(self, texts, **kw))
    assert ensemble.search(text="warm winter scarf", k=1)[0].product.id == "scarf"
    assert runs == [("minilm/top1", ["warm winter scarf"])]  # whole MiniLM never runs


def test_query_texts_are_stored_once(store, tmp_path, encoders):
    pairs = [Pair(product_id="scarf", query_text="warm scarf", query_key="a"),
             Pair(product_id="apple", query_text="warm scarf", query_key="b"),
             Pair(product_id="cone", query_image=str(draw_product(tmp_path / "c.jpg", "cone", (230, 120, 20))),
                  query_key="c")]
    config = replace(TrainingConfig(), keyword_pairs=False)
    data = training_set(store, pairs, encoders, config)
    assert data.query_text.shape == (2, 384)  # a zero row (no text) and the one distinct text
    assert data.query_text_index().tolist() == [1, 1, 0]
    assert np.allclose(data.query_text_of(np.array([0, 2])), [encoders[0].encode(["warm scarf"])[0], np.zeros(384)])


def test_crop_views_are_fixed_per_photo_and_view_and_stay_inside_it():
    from vitrine.training.views import CropViews

    views = CropViews(3, scale=(0.5, 1.0))
    boxes = [views.box("a.jpg", view, 300, 200) for view in range(3)]
    assert boxes == [views.box("a.jpg", view, 300, 200) for view in range(3)]  # the same crop every run
    assert len(set(boxes)) == 3 and views.box("b.jpg", 0, 300, 200) != boxes[0]
    for left, top, right, bottom in boxes + [views.box(f"p{i}", 0, 300, 200) for i in range(50)]:
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        assert 0.5 * 300 * 200 * 0.9 <= (right - left) * (bottom - top) <= 300 * 200
    assert CropViews(3, seed=1).box("a.jpg", 0, 300, 200) != boxes[0]


def test_training_views_are_the_cached_features_of_each_photos_crops(store, tmp_path, encoders, monkeypatch):
    from PIL import Image

    from vitrine.training.views import CropViews

    pairs = shopper_photos(tmp_path / "photos", per_product=1)
    config = replace(TrainingConfig(), image_views=2, keyword_pairs=False)
    data = training_set(store, pairs, encoders, config)
    assert data.query_image_views.shape == (2, len(data), encoders[1].dim)
    photo_rows = np.flatnonzero(data.query_has_image)
    assert not data.query_image_views[:, ~data.query_has_image].any()  # text queries have no views
    row = photo_rows[0]
    path = [p.query_image for p in pairs if p.query_image][0]
    crop = CropViews(2).crop(Image.open(path).convert("RGB"), path, 1)
    expected = encoders[1].encode([crop])[0]
    assert np.allclose(data.query_image_views[1, row], expected, atol=1e-4)
    assert not np.allclose(data.query_image_views[1, row], data.query_image[row], atol=1e-2)

    calls = []  # a second build reads every view from the cache

    def counting(images, **kwargs):
        calls.append(len(images))
        return encoder_encode(images, **kwargs)

    encoder_encode = encoders[1].encode
    monkeypatch.setattr(encoders[1], "encode", counting)
    again = training_set(store, pairs, encoders, config)
    assert calls == [] and np.array_equal(again.query_image_views, data.query_image_views)


def test_training_shows_photos_as_their_views(store, tmp_path, encoders):
    config = replace(TrainingConfig(), epochs=3, batch_size=8, hidden=32, dim=16, matryoshka="", image_views=2,
                     dev_fraction=0.0)
    data = training_set(store, shopper_photos(tmp_path / "photos"), encoders, config)
    trainer = ContrastiveTrainer(data, config, tower_config(config, "minilm", "efficientnet-lite0", 384, 1280),
                                 tmp_path / "model", progress=False)
    rows = np.flatnonzero(data.query_has_image)
    trainer.model.train()
    shown = trainer._query_images(np.repeat(rows, 20)).numpy()
    own = np.repeat(data.query_image[rows], 20, axis=0)
    crops = [np.repeat(data.query_image_views[v, rows], 20, axis=0) for v in range(2)]
    which = np.stack([np.isclose(shown, own).all(1)] + [np.isclose(shown, c).all(1) for c in crops], axis=1)
    assert which.any(axis=1).all() and which.sum(axis=0).min() > 0  # always one of the three, each of them used
    trainer.model.eval()
    assert np.array_equal(trainer._query_images(rows).numpy(), data.query_image[rows])  # dev scoring: as shot
    result = trainer.fit()
    assert result.losses[-1] < result.losses[0]


def test_trained_like_takes_a_models_training_settings(tmp_path, caplog):
    from vitrine.training.run import trained_like

    folder = tmp_path / "towers"
    folder.mkdir()
    (folder / "training.json").write_text(json.dumps({
        "training": {"objective": "prototype", "epochs": 2, "unfreeze_blocks": 5, "from_an_older_version": 1},
        "prototype": {"margin": 0.3, "stages": "1,2"}, "result": {"epochs": 2}}))
    (folder / "config.json").write_text(json.dumps({"text_encoder": "minilm", "image_encoder":
                                                    "efficientnet-lite2@288/top5"}))
    config = Config().with_overrides({"training.epochs": 30, "rerank.epochs": 7})
    like = trained_like(config, folder)
    assert (like.training.objective, like.training.epochs, like.training.unfreeze_blocks) == ("prototype", 2, 5)
    assert (like.encoders.text, like.encoders.image) == ("minilm", "efficientnet-lite2@288")  # its backbones
    assert (like.prototype.margin, like.prototype.stages) == (0.3, "1,2")
    assert like.rerank.epochs == 7 and like.training.lr == config.training.lr  # the rest is the store's
    assert trained_like(config, tmp_path / "elsewhere") == config
    assert "no readable training.json" in caplog.text


def test_two_models_on_two_backbones_are_served_side_by_side(store, tmp_path):
    from typer.testing import CliRunner

    from vitrine.cli import app

    pairs = shopper_photos(tmp_path / "photos", per_product=2)
    tiny = {"training.hidden": 32, "training.dim": 16, "training.matryoshka": "", "training.epochs": 3,
            "training.keyword_pairs": False, "encoders.image": "efficientnet-lite0@96"}
    store.config(tiny).save(store.config_path)
    train_store(store, pairs, name="first", progress=False)
    runner = CliRunner()
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"product_id": p.product_id, "query_image": p.query_image,
                                              "query_text": p.query_text}) + "\n" for p in pairs))
    result = runner.invoke(app, ["train", str(store.root), "--data", str(pairs_file), "--name", "second",
                                 "--image-encoder", "efficientnet-lite1@96"])
    assert result.exit_code == 0, result.output
    assert store.config().encoders.image == "efficientnet-lite0@96"  # the option trained one model, kept nothing
    second = TwoTowerModel.load(store.models_dir / "second")
    assert second.config.image_encoder == "efficientnet-lite1@96"
    result = runner.invoke(app, ["train", str(store.root), "--data", str(pairs_file), "--name", "native",
                                 "--image-projection", "none"])
    assert result.exit_code == 0, result.output
    assert store.config().training.image_projection == "mlp"  # this model only
    assert TwoTowerModel.load(store.models_dir / "native").config.dim == 1280  # Lite0's pooled width, not 16
    result = runner.invoke(app, ["train", str(store.root), "--data", str(pairs_file), "--image-projection", "conv"])
    assert result.exit_code != 0 and "unknown training.image_projection 'conv'" in result.output

    photo = draw_product(tmp_path / "query.jpg", "stripes", (50, 140, 70), size=210, background=(190, 170, 160))
    alone = {}
    for name in ("first", "second"):
        store.config({"embedding.model": name, "embedding.also": "", "embedding.zero_shot_weight": 0.5}).save(
            store.config_path)
        engine = vitrine.open(store)
        engine.sync(rebuild=True, progress=False)
        alone[name] = {hit.product.id: hit.score for hit in engine.search(image=photo, k=4)}
    store.config({"embedding.model": "first", "embedding.also": "second"}).save(store.config_path)
    both = vitrine.open(store)
    both.sync(rebuild=True, progress=False)
    members = both.embedder.members
    assert [m.members[1].describe()["image_encoder"] for m in members] == ["efficientnet-lite0@96",
                                                                          "efficientnet-lite1@96"]
    for hit in both.search(image=photo, k=4):  # each model with its own backbone's zero-shot block, half each
        assert hit.score == pytest.approx(0.5 * alone["first"][hit.product.id] + 0.5 * alone["second"][hit.product.id],
                                          abs=1e-4)
    assert both.channels() == ["vector"]
    models = json.loads(runner.invoke(app, ["info", str(store.root)]).output)["models"]
    assert models["first"]["in_use"] and models["second"]["in_use"]
    with pytest.raises(StoreError, match="no prototype head here"):  # contrastive models: no ID recognition
        both.search(image=photo, channel="prototype")


def test_stage3_recipe_option_trains_one_model_with_its_settings(store, tmp_path):
    from typer.testing import CliRunner

    from vitrine.cli import app
    from vitrine.config import STAGE3_RECIPES

    pairs = shopper_photos(tmp_path / "photos", per_product=2)
    store.config({"training.hidden": 32, "training.dim": 16, "training.matryoshka": "", "training.epochs": 2,
                  "training.keyword_pairs": False, "encoders.image": "efficientnet-lite0@96"}).save(store.config_path)
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"product_id": p.product_id, "query_image": p.query_image,
                                              "query_text": p.query_text}) + "\n" for p in pairs))
    runner = CliRunner()
    command = ["train", str(store.root), "--data", str(pairs_file), "--objective", "prototype", "--stages", "1"]
    result = runner.invoke(app, [*command, "--name", "recipe", "--stage3-recipe", "classifier"])
    assert result.exit_code == 0, result.output
    trained = json.loads((store.models_dir / "recipe" / "training.json").read_text())["prototype"]
    assert {k: trained[k.removeprefix("prototype.")] for k in STAGE3_RECIPES["classifier"]} == {
        "prototype.stage3_batch_size": 32, "prototype.stage3_lr": 1e-3, "prototype.stage3_lr_schedule": "cosine",
        "prototype.stage3_dev_fraction": 0.0}
    kept = store.config().prototype  # this model only: the store's own stage-3 settings stay as they were
    assert (kept.stage3_batch_size, kept.stage3_lr_schedule, kept.stage3_dev_fraction) == (0, "", -1.0)
    result = runner.invoke(app, [*command, "--name", "other", "--stage3-recipe", "linear-probe"])
    assert result.exit_code == 2
    assert "unknown stage-3 recipe 'linear-probe' (known: towers, classifier)" in result.output
    assert not (store.models_dir / "other").exists()
