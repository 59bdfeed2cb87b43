"""The three stages of prototype-ID training, each checkpointed in ``models/<name>/stage<N>/``:

1. contrastive warm-up: the contrastive trainer, backbones frozen (cached pooled features), or with their top
   blocks/layers fine-tuned as ``training.unfreeze_blocks`` / ``unfreeze_text_layers`` ask (issue 3's recipe);
2. prototype head: the library is built (labels, or k-means over stage-1 embeddings), the head's rows
   start at the prototype centroids, and head + towers train with the margin loss, backbones frozen
   (stage 1's fine-tuned tops included: their outputs are computed once);
3. end-to-end: the image backbone's top blocks train too (on cached input maps), margin loss plus the
   optional InfoNCE term, optionally at every Matryoshka prefix. After a stage 1 that fine-tuned some,
   stage 3 goes on with the same blocks and layers.

A stage whose folder holds a finished model is reused when resuming, so ``--stages 1,2`` followed by
``--stages 1,2,3 --resume`` trains stage 3 only. The last stage's towers are saved in
``models/<name>/`` (what serving loads) beside the head and the library (ID recognition).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vitrine.catalog.product import Product
from vitrine.config import Config, write_atomic
from vitrine.embedding.prototypes import (PrototypeHead, PrototypeLibrary, library_from_clusters,
                                          library_from_labels, prototype_centroids)
from vitrine.embedding.towers import TowerConfig, TwoTowerModel
from vitrine.encoders import load_image_encoder, load_text_encoder, with_top_blocks
from vitrine.encoders.base import TextEncoder
from vitrine.encoders.cache import FeatureCache
from vitrine.errors import VitrineError
from vitrine.training.data import TrainingSet, build_training_set
from vitrine.training.prototype import PrototypeTrainer
from vitrine.training.trainer import ContrastiveTrainer, TrainResult, ngram_rows, tower_config

log = logging.getLogger(__name__)

LABELS_UP_TO = 100_000
"""With ``source = auto`` and no groups, one prototype per product up to this many products."""


@dataclass
class StageInputs:
    products: list[Product]
    pairs: list
    text_encoder: TextEncoder
    cache: FeatureCache
    config: Config
    progress: bool


def parse_stages(text: str) -> list[int]:
    try:
        stages = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        stages = []
    if not stages or not set(stages) <= {1, 2, 3}:
        raise VitrineError(f"prototype stages must be a comma-separated subset of 1,2,3, got {text!r}")
    return stages


def train_prototype_stages(inputs: StageInputs, folder: Path, *, resume: bool = False) -> tuple[TrainResult, dict]:
    """Run the configured stages; returns the last stage's result and a report of every stage."""
    config, proto = inputs.config, inputs.config.prototype
    stages = parse_stages(proto.stages)
    report: dict = {"stages": {}}
    stage1_text = config.training.unfreeze_text_layers
    stage3_text = proto.stage3_unfreeze_text or stage1_text
    if stage1_text and stage3_text != stage1_text:
        raise VitrineError(f"stage 1 fine-tunes the text model's top {stage1_text} layer(s), so stage 3 goes on "
                           f"with those: prototype.stage3_unfreeze_text must be 0 or {stage1_text}, "
                           f"not {proto.stage3_unfreeze_text}")
    stage1_image = config.training.unfreeze_blocks
    if stage1_image and 3 in stages and proto.stage3_unfreeze != stage1_image:
        raise VitrineError(f"stage 1 fine-tunes the image backbone's top {stage1_image} block(s), so stage 3 goes on "
                           f"with those: prototype.stage3_unfreeze must be {stage1_image}, "
                           f"not {proto.stage3_unfreeze}")
    data, towers1, image_top, text_top = _training_set(inputs, unfreeze=stage1_image, unfreeze_text=stage1_text)
    model, result = _stage1(inputs, data, towers1, folder / "stage1", run=1 in stages, resume=resume, report=report,
                            image_top=image_top, text_top=text_top)
    if stages == [1]:  # contrastive only: no head to offer ID recognition with
        model.save(folder)
        (folder / "head.safetensors").unlink(missing_ok=True)
        return result, report
    library, head = _library_and_head(inputs, data, model, folder, resume=resume, report=report)
    weights = model.state_dict()
    if 2 in stages:
        # Stage 2 trains on frozen backbone features; stage 1's fine-tuned blocks and layers are part of that
        # backbone now, so they run once over every photo and text rather than at every step.
        pooled, towers = _through_frozen_tops(data, towers1, model)
        tops = model if model.image_top is not None or model.text_top is not None else None
        model, result = _prototype_stage(2, inputs, pooled, towers, folder / "stage2", library, head, weights,
                                         resume=resume, report=report, frozen_tops=tops, full_towers=towers1)
        weights = model.state_dict()
        del pooled
    if 3 in stages:
        maps, towers3, image_top, text_top = _training_set(inputs, unfreeze=proto.stage3_unfreeze,
                                                           unfreeze_text=stage3_text)
        model, result = _prototype_stage(3, inputs, maps, towers3, folder / "stage3", library, head, weights,
                                         resume=resume, report=report, image_top=image_top, text_top=text_top)
    model.save(folder)
    head.save(folder)
    library.save(folder)
    return result, report


def _training_set(inputs: StageInputs, unfreeze: int, unfreeze_text: int = 0):
    """Cached features for a stage (pooled, or what enters the top ``unfreeze`` image blocks and
    ``unfreeze_text`` text layers), the tower config, and the trainable tops (None when frozen)."""
    config = inputs.config
    image_name = with_top_blocks(config.encoders.image, unfreeze)
    image_encoder = load_image_encoder(image_name, config.encoders)
    image_top = image_encoder.top() if unfreeze else None
    text_encoder = (load_text_encoder(with_top_blocks(config.encoders.text, unfreeze_text), config.encoders)
                    if unfreeze_text else inputs.text_encoder)
    text_top = text_encoder.top() if unfreeze_text else None
    training = replace(config.training, unfreeze_blocks=unfreeze, unfreeze_text_layers=unfreeze_text)
    towers = tower_config(training, text_encoder.name, image_name,
                          text_top.out_dim if text_top is not None else text_encoder.dim,
                          image_top.out_dim if image_top is not None else image_encoder.dim,
                          image_input_dim=image_encoder.dim if image_top is not None else 0,
                          text_input_dim=text_encoder.dim if text_top is not None else 0)
    data = build_training_set(inputs.products, inputs.pairs, text_encoder, image_encoder, inputs.cache,
                              training, ngrams=towers.ngram_hasher(), ngram_idf=towers.ngram_idf,
                              progress=inputs.progress)
    return data, towers, image_top, text_top


def _finished(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "stage.json").is_file()


def _mark_finished(folder: Path, result: TrainResult, seconds: float) -> dict:
    entry = {**asdict(result), "wall_s": seconds}
    write_atomic(folder / "stage.json", json.dumps(entry, indent=2).encode())
    return entry


def _reused(folder: Path) -> tuple[TwoTowerModel, TrainResult, dict]:
    entry = json.loads((folder / "stage.json").read_text())
    fields = {k: v for k, v in entry.items() if k in TrainResult.__dataclass_fields__}
    return TwoTowerModel.load(folder), TrainResult(**fields), {**entry, "reused": True}


def _stage1(inputs: StageInputs, data: TrainingSet, towers, folder: Path, *, run: bool, resume: bool,
            report: dict, image_top: torch.nn.Module | None = None,
            text_top: torch.nn.Module | None = None) -> tuple[TwoTowerModel, TrainResult]:
    """Contrastive warm-up (with ``image_top`` / ``text_top``: the backbones' top blocks / layers fine-tuned
    too, as ``training.unfreeze_blocks`` / ``unfreeze_text_layers`` ask); without stage 1 (and none saved)
    later stages start from the towers' PCA start."""
    if resume and _finished(folder):
        model, result, report["stages"]["1"] = _reused(folder)
        return model, result
    config = inputs.config
    training = replace(config.training, epochs=config.prototype.stage1_epochs or config.training.epochs)
    trainer = ContrastiveTrainer(data, training, towers, folder, image_top=image_top, text_top=text_top,
                                 progress=inputs.progress)
    if not run:
        if _finished(folder):
            model, result, report["stages"]["1"] = _reused(folder)
            return model, result
        return trainer.model.eval(), TrainResult(0, 0, 0.0, 0.0)
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    trainer.model.save(folder)
    report["stages"]["1"] = _mark_finished(folder, result, time.perf_counter() - start)
    return trainer.model, result


def _library_and_head(inputs: StageInputs, data: TrainingSet, model: TwoTowerModel, folder: Path, *,
                      resume: bool, report: dict) -> tuple[PrototypeLibrary, PrototypeHead]:
    """The library (labels or clusters) and the head at its centroids in the stage-1 space."""
    proto = inputs.config.prototype
    if resume and (folder / "stage2" / "library").is_dir():
        library = PrototypeLibrary.load(folder / "stage2" / "library")
    else:
        library = None
    product_vectors, example_vectors = _stage1_vectors(model, data)
    if library is None:
        library = build_library(inputs.products, data, product_vectors, proto.source, proto.clusters, proto.purify,
                                inputs.config.training.seed)
        library.save(folder / "stage2" / "library")
    if not len(library):
        raise VitrineError("no prototypes: no training example points at a product")
    head = PrototypeHead.from_centroids(prototype_centroids(library, product_vectors, example_vectors),
                                        proto.head_dtype)
    report["library"] = {"source": library.source, "prototypes": len(library),
                         "unassigned_products": int((library.product_prototype < 0).sum()),
                         "unassigned_examples": int((library.example_prototype < 0).sum())}
    log.info("prototype library: %s", report["library"])
    return library, head


def build_library(products: list[Product], data: TrainingSet, product_vectors: np.ndarray, source: str,
                  clusters: int, purify: float, seed: int) -> PrototypeLibrary:
    if source == "auto":
        has_groups = any(p.group for p in products)
        source = "labels" if has_groups or len(products) <= LABELS_UP_TO else "clusters"
    if source == "labels":
        # Only real training pairs name prototypes: keyword queries exist for every catalog product
        # (validation groups too), and a label reached only through them would leak those groups.
        real = np.array([not key.startswith("keyword:") for key in data.query_keys], dtype=bool)
        library = library_from_labels(data.product_ids, [p.group for p in products], data.positive[real])
        library.example_prototype = library.product_prototype[data.positive]
        return library
    if source == "clusters":
        targeted = len(np.unique(data.positive))
        count = clusters or max(1, targeted // 4)
        return library_from_clusters(data.product_ids, product_vectors, data.positive, count, purify, seed)
    raise VitrineError(f"unknown prototype.source {source!r} (labels, clusters or auto)")


@torch.no_grad()
def _stage1_vectors(model: TwoTowerModel, data: TrainingSet, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    products = np.concatenate([model.products(torch.from_numpy(data.product_text[s:s + chunk]),
                                              torch.from_numpy(data.product_image[s:s + chunk]),
                                              torch.from_numpy(data.product_has_image[s:s + chunk]),
                                              ngram_rows(data.product_ngrams, slice(s, s + chunk))).numpy()
                               for s in range(0, len(data.product_ids), chunk)])
    examples = np.concatenate([model.queries(torch.from_numpy(data.query_text_of(np.arange(s, min(s + chunk, len(data))))),
                                             torch.from_numpy(data.query_image[s:s + chunk]),
                                             torch.from_numpy(data.query_has_text[s:s + chunk]),
                                             torch.from_numpy(data.query_has_image[s:s + chunk]),
                                             ngram_rows(data.query_ngrams, slice(s, s + chunk))).numpy()
                               for s in range(0, len(data), chunk)])
    return products, examples


def _prototype_stage(stage: int, inputs: StageInputs, data: TrainingSet, towers, folder: Path,
                     library: PrototypeLibrary, head: PrototypeHead, weights: dict, *, resume: bool, report: dict,
                     image_top: torch.nn.Module | None = None, text_top: torch.nn.Module | None = None,
                     frozen_tops: TwoTowerModel | None = None,
                     full_towers=None) -> tuple[TwoTowerModel, TrainResult]:
    """One margin-loss stage. With ``frozen_tops`` (a model whose fine-tuned image and text tops the stage's
    features were already run through) the saved model (``full_towers``) puts those tops back in front of the
    towers."""
    if resume and _finished(folder):
        model, result, report["stages"][str(stage)] = _reused(folder)
        head.weight.copy_(PrototypeHead.load(folder).weight)
        return model, result
    config = inputs.config
    proto = config.prototype
    epochs = (proto.stage2_epochs if stage == 2 else proto.stage3_epochs) or config.training.epochs
    training = replace(config.training, epochs=epochs, unfreeze_blocks=proto.stage3_unfreeze if stage == 3 else 0,
                       unfreeze_text_layers=proto.stage3_unfreeze_text if stage == 3 else 0)
    if stage == 3:
        training = replace(training, lr=proto.stage3_lr or training.lr,
                           batch_size=proto.stage3_batch_size or training.batch_size,
                           lr_schedule=proto.stage3_lr_schedule or training.lr_schedule,
                           dev_fraction=training.dev_fraction if proto.stage3_dev_fraction < 0
                           else proto.stage3_dev_fraction)
    trainer = PrototypeTrainer(data, training, proto, towers, folder, library, head, image_top=image_top,
                               text_top=text_top,
                               start=weights, matryoshka=stage == 3 and proto.stage3_matryoshka,
                               progress=inputs.progress)
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    model = trainer.model if frozen_tops is None else _with_tops(trainer.model, frozen_tops, full_towers)
    model.save(folder)
    head.save(folder)
    report["stages"][str(stage)] = _mark_finished(folder, result, time.perf_counter() - start)
    return model, result


@torch.no_grad()
def _through_frozen_tops(data: TrainingSet, towers: TowerConfig,
                         model: TwoTowerModel) -> tuple[TrainingSet, TowerConfig]:
    """``data`` with its text token states and image maps replaced by the pooled features ``model``'s
    fine-tuned text and image tops make of them (each where the model has one), and the tower config for such
    pooled inputs."""
    model.eval()

    def pooled(inputs: np.ndarray, through, width: int) -> np.ndarray:
        out = np.zeros((len(inputs), width), dtype=np.float32)
        for s in range(0, len(inputs), 256):
            chunk = torch.from_numpy(np.ascontiguousarray(inputs[s:s + 256], dtype=np.float32))
            out[s:s + 256] = through(chunk, chunk.abs().sum(dim=1) > 0).numpy()  # zero rows: no text / no photo
        return out

    if model.text_top is not None:
        data = replace(data, product_text=pooled(data.product_text, model.text_features, towers.text_dim),
                       query_text=pooled(data.query_text, model.text_features, towers.text_dim))
        towers = replace(towers, text_input_dim=0)
    if model.image_top is not None:
        data = replace(data, product_image=pooled(data.product_image, model.image_features, towers.image_dim),
                       query_image=pooled(data.query_image, model.image_features, towers.image_dim))
        # the stage's model takes pooled features: no top of its own (serving gets stage 1's back, _with_tops)
        towers = replace(towers, image_input_dim=0, image_encoder=with_top_blocks(towers.image_encoder, 0))
    return data, towers


def _with_tops(model: TwoTowerModel, tops: TwoTowerModel, towers: TowerConfig) -> TwoTowerModel:
    """Towers trained on pooled features behind the fine-tuned tops of ``tops`` that pooled them: the model
    serving loads."""
    full = TwoTowerModel(towers, image_top=tops.image_top, text_top=tops.text_top)
    missing, unexpected = full.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not name.startswith(("text_top.", "image_top.")) for name in missing):
        raise RuntimeError(f"towers do not fit the tops' model: missing {missing}, unexpected {unexpected}")
    return full.eval()
