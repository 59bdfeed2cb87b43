"""Prototype-ID embedding: ArcFace logits, negative selection, the neighbour table, libraries,
the staged trainer with resume, and ID recognition as a search channel. Fixtures are drawn here."""

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

import vitrine
from conftest import draw_product
from test_training import shopper_photos, store  # noqa: F401  (the drawn store fixture)
from vitrine.engine.prototype_channel import PrototypeChannel, TowerBlock
from vitrine.embedding.prototypes import (PrototypeHead, PrototypeLibrary, library_from_clusters,
                                          library_from_labels, prototype_centroids)
from vitrine.catalog.product import LabelledQuery, Pair
from vitrine.encoders import load_image_encoder, load_text_encoder
from vitrine.encoders.efficientnet import EfficientNetLiteEncoder
from vitrine.errors import StoreError, VitrineError
from vitrine.evaluation import evaluate
from vitrine.embedding import Query, TwoTowerModel
from vitrine.training import train_store
from vitrine.training.losses import ArcFace, arcface_logits
from vitrine.training.prototype_negatives import PrototypeNeighbours, sample_columns
from vitrine.training.stages import parse_stages


def test_arcface_logits_match_a_hand_computation():
    cosines = torch.tensor([[0.5, 0.2, -0.1], [-0.99, 0.3, 0.0], [0.0, 0.8, 0.1]])
    targets = torch.tensor([0, 0, -1])
    logits = arcface_logits(cosines, targets, margin=0.5, scale=2.0)
    # row 0: θ = acos 0.5 = π/3, so the target logit is 2·cos(π/3 + 0.5)
    assert logits[0, 0].item() == pytest.approx(2 * math.cos(math.pi / 3 + 0.5), abs=1e-5)
    # row 1: θ = acos(-0.99) ≈ 3.0, θ + m > π: the fallback 2·(cos θ - m·sin(π - m)) keeps it decreasing
    assert logits[1, 0].item() == pytest.approx(2 * (-0.99 - 0.5 * math.sin(math.pi - 0.5)), abs=1e-5)
    assert logits[1, 0].item() < 2 * -0.99
    # other columns, and a row without a target, are just scaled cosines
    assert torch.allclose(logits[:, 1:], 2 * cosines[:, 1:]) and torch.allclose(logits[2], 2 * cosines[2])
    loss = ArcFace(margin=0.5, temperature=0.5)(cosines, targets)
    by_hand = -torch.log_softmax(logits[:2], dim=1)[[0, 1], [0, 0]].mean()
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_the_margin_makes_the_loss_larger_for_the_same_cosines():
    cosines = torch.tensor([[0.7, 0.6, 0.1]])
    assert ArcFace(0.3, 0.1)(cosines, torch.tensor([0])) > ArcFace(0.0, 0.1)(cosines, torch.tensor([0]))


def clustered_rows(groups: int = 20, per_group: int = 5, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    rows = np.repeat(centres, per_group, axis=0) + 0.05 * rng.normal(size=(groups * per_group, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_nearest_negatives_are_the_targets_closest_prototypes():
    rows = clustered_rows()
    neighbours = PrototypeNeighbours(every=10)
    neighbours.refresh(rows, step=0)
    near = neighbours.neighbours(np.array([0, 7]), 4)
    assert set(near[0]) == {1, 2, 3, 4} and set(near[1]) == {5, 6, 8, 9}  # the rest of each group
    columns = sample_columns(np.array([0, 7, -1]), len(rows), "nearest", 0.1, np.random.default_rng(0), neighbours)
    assert len(columns) == 10 and {0, 7} | {1, 2, 3, 4, 5, 6, 8, 9} == set(columns.tolist())
    random = sample_columns(np.array([0, 7]), len(rows), "random", 0.1, np.random.default_rng(0))
    assert len(random) == 10 and {0, 7} <= set(random.tolist()) and np.all(np.diff(random) > 0)
    assert sample_columns(np.array([0]), len(rows), "all", 0.1, np.random.default_rng(0)) is None
    with pytest.raises(VitrineError, match="unknown prototype negatives"):
        sample_columns(np.array([0]), len(rows), "closest", 0.1, np.random.default_rng(0))


def test_the_neighbour_table_follows_the_head_only_when_refreshed():
    rows = clustered_rows()
    neighbours = PrototypeNeighbours(every=5)
    neighbours.refresh(rows, step=0)
    assert set(neighbours.neighbours(np.array([0]), 4)[0]) == {1, 2, 3, 4}
    moved = rows.copy()
    moved[0] = rows[50]  # prototype 0 now sits in group 10
    assert not neighbours.due(4) and set(neighbours.neighbours(np.array([0]), 4)[0]) == {1, 2, 3, 4}
    assert neighbours.due(5)
    neighbours.refresh(moved, step=5)
    assert set(neighbours.neighbours(np.array([0]), 4)[0]) <= set(range(50, 55))


def test_the_ivf_table_for_many_prototypes_finds_the_same_neighbours():
    rows = clustered_rows(groups=100, per_group=5, dim=16)
    neighbours = PrototypeNeighbours(every=1, exact_below=100, nprobe=8)
    neighbours.refresh(rows, step=0)
    near = neighbours.neighbours(np.array([0, 250]), 4)
    assert set(near[0]) == {1, 2, 3, 4} and set(near[1]) == {251, 252, 253, 254}


def test_label_library_skips_products_no_example_points_at(tmp_path):
    library = library_from_labels(["a", "b", "c", "d"], ["g1", "g1", None, "g2"], positives=np.array([0, 2, 2]))
    assert library.names == ["g1", "product:c"]
    assert library.product_prototype.tolist() == [0, 0, 1, -1]  # d's group has no training example
    assert library.example_prototype.tolist() == [0, 1, 1]
    library.save(tmp_path)
    loaded = PrototypeLibrary.load(tmp_path)
    assert loaded.names == library.names and loaded.members() == [["a", "b"], ["c"]]


def test_cluster_library_groups_drawn_products_and_drops_outliers(tmp_path):
    from vitrine.encoders import load_image_encoder

    colours = {"red": (200, 30, 30), "blue": (30, 60, 200), "green": (40, 150, 60)}
    paths, truth = [], []
    for name, colour in colours.items():
        for i, shape in enumerate(["circle", "square", "stripes", "triangle"]):
            paths.append(draw_product(tmp_path / f"{name}-{i}.png", shape, colour, size=120))
            truth.append(name)
    vectors = load_image_encoder("efficientnet-lite0@96").encode([str(p) for p in paths])
    ids = [f"p{i}" for i in range(len(paths))]
    whole = library_from_clusters(ids, vectors, np.arange(len(ids)), count=3, purify=0.0)
    assert whole.source == "clusters" and len(whole) == 3 and (whole.product_prototype >= 0).all()
    shapes = np.arange(len(ids)) % 4
    for shape in range(4):  # the same drawn shape in any colour lands in one cluster
        assert len(set(whole.product_prototype[shapes == shape].tolist())) == 1
    purified = library_from_clusters(ids, vectors, np.arange(len(ids)), count=3, purify=0.25)
    dropped = np.flatnonzero(purified.product_prototype < 0)
    sizes = np.bincount(whole.product_prototype)
    assert len(dropped) == sum(int(0.25 * size) for size in sizes) > 0
    centres = prototype_centroids(whole, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for row in dropped:  # each dropped product is the farthest member of its cluster
        cluster = whole.product_prototype[row]
        members = np.flatnonzero(whole.product_prototype == cluster)
        assert row == members[np.argmin(unit[members] @ centres[cluster])]
    library = purified
    centroids = prototype_centroids(library, vectors)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    with pytest.raises(VitrineError, match="cannot make"):
        library_from_clusters(ids, vectors, np.arange(len(ids)), count=50)


def test_head_updates_only_the_rows_a_step_used():
    head = PrototypeHead.random(50, 8, dtype="float16")
    before = head.weight.clone()
    columns = torch.tensor([3, 7])
    rows = head.rows(columns)
    (rows @ torch.ones(8)).sum().backward()
    head.update(columns, rows.grad, lr=0.5)
    changed = (head.weight != before).any(dim=1)
    assert changed[[3, 7]].all() and changed.sum() == 2 and head.weight.dtype == torch.float16
    assert torch.allclose(head.weight[[3, 7]].float().norm(dim=1), torch.ones(2), atol=1e-2)


STAGES = {"training.batch_size": 8, "training.hidden": 64, "training.dim": 32, "training.lr": 3e-3,
          "training.matryoshka": "", "training.dev_fraction": 0.0, "encoders.image": "efficientnet-lite0@96",
          "training.keyword_pairs": False, "prototype.stage1_epochs": 4, "prototype.stage2_epochs": 6,
          "prototype.stage3_epochs": 1, "prototype.margin": 0.2, "prototype.temperature": 0.1}


def test_stages_train_resume_and_serve_id_recognition(store, tmp_path, monkeypatch):  # noqa: F811
    pairs = shopper_photos(tmp_path / "photos", per_product=2)
    folder = store.models_dir / "proto"

    def train(stages: str, resume: bool = True):
        config = store.config({**STAGES, "training.objective": "prototype", "prototype.stages": stages})
        return train_store(store, pairs, config=config, name="proto", resume=resume, progress=False)

    train("1", resume=False)  # contrastive only: no head, so no ID recognition yet
    with pytest.raises(StoreError, match="no prototype head"):
        PrototypeChannel.load([folder], [TowerBlock(0, 16)], store.catalog.key_of)
    first_stage = (folder / "stage1" / "model.safetensors").stat().st_mtime_ns

    train("1,2")
    for name in ("model.safetensors", "head.safetensors", "prototypes.npz", "training.json"):
        assert (folder / name).is_file()
    assert (folder / "stage1" / "model.safetensors").stat().st_mtime_ns == first_stage  # reused, not retrained
    stage2_head = PrototypeHead.load(folder / "stage2").weight.clone()
    assert len(PrototypeLibrary.load(folder)) == 4  # one prototype per drawn product

    result = train("1,2,3")
    assert result.epochs == 1 and (folder / "stage3" / "stage.json").is_file()
    assert not torch.equal(PrototypeHead.load(folder).weight, stage2_head)  # stage 3 moved the head on
    report = json.loads((folder / "training.json").read_text())
    assert report["stages"]["1"]["reused"] and report["stages"]["2"]["reused"] and "reused" not in report["stages"]["3"]

    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    photo = draw_product(tmp_path / "new-photo.jpg", "stripes", (50, 140, 70), size=210, background=(190, 170, 160))
    vector_hits = engine.search(image=photo, k=4)
    id_hits = engine.search(image=photo, k=4, channel="prototype")
    assert id_hits[0].product.id == "scarf" and vector_hits[0].product.id == "scarf"
    assert sorted(h.product.id for h in id_hits) == sorted(h.product.id for h in vector_hits)
    labelled = [LabelledQuery(relevant={"scarf": 1}, image=str(photo), where="photo")]
    report = evaluate(engine, labelled, depth=4, channel="prototype", progress=False)
    assert report.per_query[0].ranked == [h.product.id for h in id_hits] and report.metrics["recall@1"] == 1.0
    assert report.channel == "prototype" and "ID recognition" in report.markdown()
    with pytest.raises(VitrineError, match="unknown search channel"):
        engine.search(image=photo, channel="telepathy")

    # Served beside the zero-shot vectors, both channels score on one scale: half the towers' cosine (to the
    # product, or to its prototype's row) plus half the zero-shot cosine.
    store.config({"embedding.zero_shot_weight": 0.5, "encoders.image": STAGES["encoders.image"]}).save(store.config_path)
    ensemble = vitrine.open(store)
    assert "built with trained proto embeddings but the store now uses trained proto x0.5 + zeroshot x0.5" in (
        ensemble.stale or "")
    ensemble.sync(rebuild=True, progress=False)
    towers, zero_shot = ensemble.embedder.members
    assert ensemble.embedder.dim == towers.dim + zero_shot.dim and zero_shot.kind == "zeroshot"
    query = [Query(image=photo)]
    q_towers, q_zero = towers.encode_queries(query)[0], zero_shot.encode_queries(query)[0]
    # The towers fine-tuned the top block of the zero-shot backbone: the zero-shot photo vector is the pretrained
    # network's own, computed from the towers' input maps, and one photo search runs the frozen blocks once.
    plain = load_image_encoder("efficientnet-lite0@96").encode([photo])[0]
    assert np.allclose(q_zero[:len(plain)], plain, atol=1e-4) and not q_zero[len(plain):].any()
    runs = []
    bottom_features = EfficientNetLiteEncoder._features
    monkeypatch.setattr(EfficientNetLiteEncoder, "_features", lambda self, pixels: runs.append(self.name) or
                        bottom_features(self, pixels))
    ensemble.search(image=photo.read_bytes(), k=2)
    assert runs == ["efficientnet-lite0@96/top1"]
    products = {h.product.id: replace(h.product, images=tuple(str(store.resolve(i)) for i in h.product.images))
                for h in vector_hits}
    p_towers = dict(zip(products, towers.encode_products(list(products.values()))))
    p_zero = dict(zip(products, zero_shot.encode_products(list(products.values()))))
    for hit in ensemble.search(image=photo, k=4):
        expected = 0.5 * p_towers[hit.product.id] @ q_towers + 0.5 * p_zero[hit.product.id] @ q_zero
        assert hit.score == pytest.approx(float(expected), abs=1e-4)
    rows = PrototypeHead.load(folder).unit_rows()
    prototype_of = {pid: row for row, ids in enumerate(PrototypeLibrary.load(folder).members()) for pid in ids}
    id_hits = ensemble.search(image=photo, k=4, channel="prototype")
    assert id_hits[0].product.id == "scarf"
    for hit in id_hits:  # a product found both ways keeps its better score
        pid = hit.product.id
        zero = 0.5 * p_zero[pid] @ q_zero
        expected = max(0.5 * rows[prototype_of[pid]] @ q_towers + zero, 0.5 * p_towers[pid] @ q_towers + zero)
        assert hit.score == pytest.approx(float(expected), abs=1e-4)

    # Two models served side by side (embedding.also) recognise IDs together: a prototype scores the weighted
    # sum of both heads' cosines. The second model here is the first with its head's rows moved.
    moved_folder = store.models_dir / "proto-moved"
    shutil.copytree(folder, moved_folder)
    PrototypeHead(torch.roll(PrototypeHead.load(folder).weight, 1, dims=1)).save(moved_folder)
    moved_rows = PrototypeHead.load(moved_folder).unit_rows()
    store.config({"embedding.also": "proto-moved"}).save(store.config_path)
    both = vitrine.open(store)
    both.sync(rebuild=True, progress=False)
    assert both.channels() == ["vector", "prototype"]
    for hit in both.search(image=photo, k=4, channel="prototype"):  # each block weighs 1/4 now
        pid = hit.product.id
        zero = 0.5 * p_zero[pid] @ q_zero
        prototype = 0.25 * (rows[prototype_of[pid]] + moved_rows[prototype_of[pid]]) @ q_towers
        assert hit.score == pytest.approx(float(max(prototype + zero, 0.5 * p_towers[pid] @ q_towers + zero)), abs=1e-4)
    library = PrototypeLibrary.load(moved_folder)  # a model trained on other prototypes cannot join in
    library.product_prototype = np.roll(library.product_prototype, 1)
    library.save(moved_folder)
    with pytest.raises(StoreError, match="different prototype libraries"):
        vitrine.open(store).search(image=photo, channel="prototype")
    store.config({"embedding.also": ""}).save(store.config_path)

    store.config({"embedding.zero_shot_weight": 1.0}).save(store.config_path)
    with pytest.raises(StoreError, match=r"zero_shot_weight must be in \[0, 1\), got 1.0"):
        vitrine.open(store)


def test_the_service_offers_id_recognition_once_the_towers_have_a_head(store, tmp_path):  # noqa: F811
    from fastapi.testclient import TestClient

    from vitrine.config import ServeConfig
    from vitrine.serve import create_app

    pairs = shopper_photos(tmp_path / "photos", per_product=2)
    config = store.config({**STAGES, "training.objective": "prototype", "prototype.stages": "1,2"})
    train_store(store, pairs, config=config, name="proto", progress=False)
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    photo = draw_product(tmp_path / "new-photo.jpg", "stripes", (50, 140, 70), size=210, background=(190, 170, 160))
    with TestClient(create_app(engine, ServeConfig())) as client:
        assert client.get("/api/info").json()["channels"] == ["vector", "prototype"]
        response = client.post("/search", files={"image": photo.read_bytes()}, data={"k": "4", "channel": "prototype"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["query"]["channel"] == "prototype"
        expected = engine.search(image=photo, k=4, channel="prototype")
        vector = engine.search(image=photo, k=4)
        assert [h.score for h in expected] != pytest.approx([h.score for h in vector], abs=1e-5)  # so the service cannot have fallen back to vectors
        assert [hit["product"]["id"] for hit in body["results"]] == [h.product.id for h in expected]
        assert [hit["score"] for hit in body["results"]] == pytest.approx([h.score for h in expected], abs=1e-5)
        text = client.get("/search", params={"q": "warm winter scarf", "k": 2, "channel": "prototype"}).json()
        assert [hit["product"]["id"] for hit in text["results"]] == [
            h.product.id for h in engine.search(text="warm winter scarf", k=2, channel="prototype")]


def test_id_recognition_scores_a_prototype_in_the_towers_block_and_keeps_the_other_blocks():
    head = PrototypeHead.from_centroids(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    served = {10: np.array([0.6, 0.8, 1.0, 0.0]), 11: np.array([0.8, 0.6, 0.0, 1.0]),
              12: np.array([0.0, 1.0, 0.6, 0.8])}
    members = [np.array([10, 11]), np.array([12])]
    scale = np.sqrt(0.5)
    channel = PrototypeChannel([(head, TowerBlock(0, 2, scale))], members)
    query = np.array([[scale * 0.8, scale * 0.6, scale * 1.0, 0.0]], dtype=np.float32)  # towers (0.8, 0.6), zero-shot (1, 0)
    no_hits = (np.full((1, 3), -np.inf, dtype=np.float32), np.full((1, 3), -1))
    scores, keys = channel.search(query, 3, *no_hits, lambda key: scale * served[key])
    # prototype 0 (cosine 0.8) holds 10 (zero-shot 1) and 11 (zero-shot 0); prototype 1 (cosine 0.6) holds 12 (0.6)
    assert keys[0].tolist() == [10, 12, 11]
    assert np.allclose(scores[0], [0.5 * 0.8 + 0.5 * 1.0, 0.5 * 0.6 + 0.5 * 0.6, 0.5 * 0.8 + 0.0])
    alone = PrototypeChannel([(head, TowerBlock(0, 2))], members)
    plain, _ = alone.search(query[:, :2] / scale, 3, *no_hits, lambda key: served[key][:2])
    assert np.allclose(plain[0], [0.8, 0.8, 0.6])  # without other blocks: the prototype's cosine alone


def test_id_recognition_over_two_models_sums_their_heads_as_their_blocks_weigh():
    first = PrototypeHead.from_centroids(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    second = PrototypeHead.from_centroids(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32))  # disagrees
    weights = (0.75, 0.25)
    blocks = [TowerBlock(0, 2, math.sqrt(weights[0])), TowerBlock(2, 4, math.sqrt(weights[1]))]
    channel = PrototypeChannel([(first, blocks[0]), (second, blocks[1])], [np.array([0]), np.array([1])])
    towers = (np.array([0.8, 0.6]), np.array([0.8, 0.6]))  # each model's own query vector
    query = np.concatenate([math.sqrt(w) * t for w, t in zip(weights, towers)])[None].astype(np.float32)
    scores, prototypes = channel.top(query, 2)
    # prototype 0: 0.75 * 0.8 (first model) + 0.25 * 0.6 (second); prototype 1: 0.75 * 0.6 + 0.25 * 0.8
    assert prototypes[0].tolist() == [0, 1] and np.allclose(scores[0], [0.75, 0.65])
    with pytest.raises(StoreError, match="differ in size"):
        PrototypeChannel([(first, blocks[0]), (PrototypeHead.from_centroids(np.eye(3, 2, dtype=np.float32)),
                                               blocks[1])], [np.array([0]), np.array([1])])


@pytest.mark.parametrize("ngram_buckets", [0, 4096])
def test_a_stage_interrupted_mid_way_resumes_from_its_checkpoint(store, tmp_path, ngram_buckets):  # noqa: F811
    pairs = shopper_photos(tmp_path / "photos", per_product=1)
    short = {**STAGES, "training.objective": "prototype", "prototype.stages": "1,2", "prototype.stage1_epochs": 2,
             "prototype.stage2_epochs": 2, "training.ngram_buckets": ngram_buckets}
    train_store(store, pairs, config=store.config(short), name="p", progress=False)
    folder = store.models_dir / "p" / "stage2"
    (folder / "stage.json").unlink()  # as if the process had died after epoch 2 of 4
    first = torch.load(folder / "checkpoint.pt", weights_only=False)["history"]
    result = train_store(store, pairs, config=store.config({**short, "prototype.stage2_epochs": 4}), name="p",
                         resume=True, progress=False)
    assert result.epochs == 4 and result.losses[:2] == first  # epochs 1-2 were not redone
    if ngram_buckets:  # the n-gram table trained through both stages and is saved with the towers
        assert bool(TwoTowerModel.load(store.models_dir / "p").ngrams.bag.weight.abs().sum() > 0)


def test_stage_lists_are_checked():
    assert parse_stages("3, 1,2") == [1, 2, 3]
    for bad in ("4", "", "one"):
        with pytest.raises(VitrineError, match="stages"):
            parse_stages(bad)


def test_keyword_queries_do_not_name_prototypes():
    """Keyword queries exist for every catalog product, validation groups included: a group reached only
    through them must get no prototype, or training would learn the validation groups (a leak)."""
    from types import SimpleNamespace

    from vitrine.training.stages import build_library

    products = [SimpleNamespace(group="g-train"), SimpleNamespace(group="g-val"), SimpleNamespace(group="g-train")]
    data = SimpleNamespace(product_ids=["a", "b", "c"], query_keys=["photo:1", "keyword:b", "keyword:c"],
                           positive=np.array([0, 1, 2]))
    library = build_library(products, data, np.zeros((3, 4), np.float32), "labels", 0, 0.1, 0)
    assert library.names == ["g-train"]
    assert library.product_prototype.tolist() == [0, -1, 0]
    assert library.example_prototype.tolist() == [0, -1, 0]


def test_stage3_can_fine_tune_the_text_model_top(store, tmp_path):  # noqa: F811
    pairs = [Pair(product_id=pid, query_text=text, query_key=text) for pid, text in [
        ("scarf", "warm winter scarf"), ("scarf", "striped wool neck warmer"), ("apple", "fresh red apple"),
        ("apple", "crisp fruit for lunch"), ("cone", "traffic cone orange"), ("cone", "road safety marker"),
        ("mug", "ceramic coffee mug"), ("mug", "cup for tea")]]
    config = store.config({**STAGES, "training.objective": "prototype", "prototype.stages": "1,2,3",
                           "prototype.stage3_epochs": 2, "prototype.stage3_unfreeze": 0,
                           "prototype.stage3_unfreeze_text": 1})
    result = train_store(store, pairs, config=config, name="proto-text", progress=False)
    assert result.epochs == 2
    folder = store.models_dir / "proto-text"
    stage2, final = TwoTowerModel.load(folder / "stage2"), TwoTowerModel.load(folder)
    assert stage2.text_top is None and final.config.text_encoder == "minilm/top1"
    assert final.image_top is None  # no image blocks asked for
    pretrained = load_text_encoder("minilm/top1").top().state_dict()
    assert any(not torch.equal(final.text_top.state_dict()[name], value) for name, value in pretrained.items())
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    assert engine.search(text="warm winter scarf", k=1)[0].product.id == "scarf"
    assert engine.search(text="warm winter scarf", k=1, channel="prototype")[0].product.id == "scarf"


TEXT_PAIRS = [("scarf", "warm winter scarf"), ("scarf", "striped wool neck warmer"), ("apple", "fresh red apple"),
              ("apple", "crisp fruit for lunch"), ("cone", "traffic cone orange"), ("cone", "road safety marker"),
              ("mug", "ceramic coffee mug"), ("mug", "cup for tea")]


def staged_models(folder):
    """A prototype model's saved stage 1, stage 2 and final (stage 3) towers."""
    return TwoTowerModel.load(folder / "stage1"), TwoTowerModel.load(folder / "stage2"), TwoTowerModel.load(folder)


def assert_stage1_moved_stage2_kept_stage3_moved(pretrained: dict, top_of, stage1, stage2, final) -> None:
    """A backbone top fine-tuned in stage 1 (``top_of(model)``: its state dict) stays frozen in stage 2 and trains on
    in stage 3."""
    assert any(not torch.equal(top_of(stage1)[name], value) for name, value in pretrained.items())
    assert all(torch.equal(top_of(stage2)[name], value) for name, value in top_of(stage1).items())
    assert any(not torch.equal(top_of(final)[name], value) for name, value in top_of(stage2).items())


def test_stage1_fine_tunes_the_text_top_stage2_keeps_it_stage3_trains_on(store):  # noqa: F811
    pairs = [Pair(product_id=pid, query_text=text, query_key=text) for pid, text in TEXT_PAIRS]
    config = store.config({**STAGES, "training.objective": "prototype", "prototype.stages": "1,2,3",
                           "training.unfreeze_text_layers": 1, "prototype.stage1_epochs": 2,
                           "prototype.stage2_epochs": 3, "prototype.stage3_unfreeze": 0})
    train_store(store, pairs, config=config, name="proto-text1", progress=False)
    stage1, stage2, final = staged_models(store.models_dir / "proto-text1")
    assert stage1.config.text_encoder == stage2.config.text_encoder == final.config.text_encoder == "minilm/top1"
    assert_stage1_moved_stage2_kept_stage3_moved(load_text_encoder("minilm/top1").top().state_dict(),
                                                 lambda model: model.text_top.state_dict(), stage1, stage2, final)
    assert not torch.equal(stage2.product_text.linear.weight, stage1.product_text.linear.weight)  # towers trained
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    assert engine.search(text="warm winter scarf", k=1)[0].product.id == "scarf"
    assert engine.search(text="warm winter scarf", k=1, channel="prototype")[0].product.id == "scarf"


def test_stage3_cannot_fine_tune_other_text_layers_than_stage1(store):  # noqa: F811
    pairs = [Pair(product_id=pid, query_text=text, query_key=text) for pid, text in TEXT_PAIRS]
    config = store.config({**STAGES, "training.objective": "prototype", "training.unfreeze_text_layers": 1,
                           "prototype.stage3_unfreeze_text": 2})
    with pytest.raises(VitrineError, match="stage3_unfreeze_text must be 0 or 1"):
        train_store(store, pairs, config=config, name="proto-mismatch", progress=False)


def test_stage1_fine_tunes_the_image_top_stage2_keeps_it_stage3_trains_on(store, tmp_path):  # noqa: F811
    """Issue 3's never-trained recipe (a contrastive warm-up with the backbone's top block fine-tuned) as stage 1."""
    pairs = shopper_photos(tmp_path / "photos", per_product=2)
    config = store.config({**STAGES, "training.objective": "prototype", "prototype.stages": "1,2,3",
                           "training.unfreeze_blocks": 1, "prototype.stage1_epochs": 2,
                           "prototype.stage2_epochs": 3, "prototype.stage3_unfreeze": 1})
    train_store(store, pairs, config=config, name="proto-image1", progress=False)
    stage1, stage2, final = staged_models(store.models_dir / "proto-image1")
    assert stage1.config.image_encoder == stage2.config.image_encoder == final.config.image_encoder
    assert final.config.image_encoder.endswith("/top1")
    assert_stage1_moved_stage2_kept_stage3_moved(load_image_encoder("efficientnet-lite0@96/top1").top().state_dict(),
                                                 lambda model: model.image_top.state_dict(), stage1, stage2, final)
    assert not torch.equal(stage2.product_image.linear.weight, stage1.product_image.linear.weight)  # towers trained
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    photo = draw_product(tmp_path / "query.jpg", "stripes", (40, 150, 60), size=200, background=(170, 160, 150))
    assert engine.search(image=photo, k=1)[0].product.id == "scarf"
    assert engine.search(image=photo, k=1, channel="prototype")[0].product.id == "scarf"
    mismatch = store.config({**STAGES, "training.objective": "prototype", "prototype.stages": "1,2,3",
                             "training.unfreeze_blocks": 1, "prototype.stage3_unfreeze": 2})
    with pytest.raises(VitrineError, match="stage3_unfreeze must be 1, not 2"):
        train_store(store, pairs, config=mismatch, name="proto-image-mismatch", progress=False)


def test_a_model_without_image_projection_trains_stage3_on_its_own_schedule(store, tmp_path):  # noqa: F811
    pairs = shopper_photos(tmp_path / "photos", per_product=5)  # 4 products x (5 photos + 1 text): 24 queries
    config = store.config({**STAGES, "training.objective": "prototype", "prototype.stages": "1,2,3",
                           "training.image_projection": "none", "training.dev_fraction": 0.25,
                           "prototype.stage3_epochs": 2, "prototype.stage3_batch_size": 4, "prototype.stage3_lr": 1e-3,
                           "prototype.stage3_lr_schedule": "cosine", "prototype.stage3_dev_fraction": 0.0})
    train_store(store, pairs, config=config, name="native", progress=False)
    folder = store.models_dir / "native"
    report = json.loads((folder / "training.json").read_text())["stages"]
    # Stage 1: 18 queries after its dev split, batches of 8; stage 3: all 24 (no dev split), batches of 4, and
    # a cosine schedule keeps its last epoch.
    assert report["1"]["steps"] == 4 * 3 and len(report["1"]["dev_scores"]) == 4
    assert report["3"]["steps"] == 2 * 6 and report["3"]["best_epoch"] == 2 and not report["3"]["dev_scores"]
    model = TwoTowerModel.load(folder)
    assert model.config.dim == model.config.image_dim == 1280 and model.config.matryoshka == [1280]
    assert isinstance(model.product_image, torch.nn.Identity) and model.image_top is not None
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    photo = draw_product(tmp_path / "new-photo.jpg", "stripes", (50, 140, 70), size=210, background=(190, 170, 160))
    # A photo's vector is the fine-tuned backbone's pooled features themselves.
    maps = load_image_encoder(model.config.image_encoder).encode([photo])
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(model.image_top(torch.from_numpy(maps)), dim=1)[0].numpy()
    assert np.allclose(engine.embedder.encode_queries([Query(image=photo)])[0], pooled, atol=1e-5)
    assert engine.search(image=photo, k=1)[0].product.id == "scarf"
    assert engine.search(image=photo, k=1, channel="prototype")[0].product.id == "scarf"
    with pytest.raises(VitrineError, match="prototype.stage3_lr_schedule 'linear'"):
        train_store(store, pairs, config=store.config({**STAGES, "training.objective": "prototype",
                                                       "prototype.stage3_lr_schedule": "linear"}), progress=False)
