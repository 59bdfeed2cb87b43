"""Training a store's embedding model end to end: features, towers, checkpoint, report, config."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path

from vitrine.catalog import Store
from vitrine.catalog.product import Pair
from vitrine.config import Config, write_atomic
from vitrine.embedding.towers import IMAGE_PROJECTIONS
from vitrine.embedding.trained import save_trained_products
from vitrine.encoders import load_image_encoder, load_text_encoder, with_top_blocks
from vitrine.errors import VitrineError
from vitrine.training.data import build_training_set
from vitrine.encoders.cache import FeatureCache
from vitrine.training.stages import StageInputs, train_prototype_stages
from vitrine.training.trainer import LR_SCHEDULES, ContrastiveTrainer, TrainResult, plot_losses, tower_config

log = logging.getLogger(__name__)

OBJECTIVES = ("contrastive", "prototype")
TRAINED_SECTIONS = ("training", "prototype")


def train_store(store: Store, pairs: Sequence[Pair], *, config: Config | None = None, name: str = "default",
                held_out: set[str] | frozenset[str] = frozenset(), resume: bool = False,
                progress: bool = True, activate: bool = True) -> TrainResult:
    """Train towers on ``pairs`` against the store's catalog (minus ``held_out`` products), save them
    as ``models/<name>``, and (``activate``) switch the store's config to use them (re-index afterwards)."""
    config = config or store.config()
    if config.training.objective not in OBJECTIVES:
        raise VitrineError(f"unknown training objective {config.training.objective!r} "
                           f"(this vitrine knows: {', '.join(OBJECTIVES)})")
    for key, schedule in (("training.lr_schedule", config.training.lr_schedule),
                          ("prototype.stage3_lr_schedule", config.prototype.stage3_lr_schedule or "constant")):
        if schedule not in LR_SCHEDULES:
            raise VitrineError(f"unknown {key} {schedule!r} (choose one of: {', '.join(LR_SCHEDULES)})")
    if config.training.image_projection not in IMAGE_PROJECTIONS:
        raise VitrineError(f"unknown training.image_projection {config.training.image_projection!r} "
                           f"(choose one of: {', '.join(IMAGE_PROJECTIONS)})")
    products = [replace(p, images=tuple(str(store.resolve(i)) for i in p.images))
                for p in store.catalog if p.id not in held_out]
    pairs = [pair for pair in pairs if pair.product_id not in held_out]
    if config.training.ngram_buckets and config.training.nproc != 1:
        raise VitrineError("training.ngram_buckets trains in one process (training.nproc = 1)")
    if config.training.objective == "prototype":  # its stages load the split text encoders they need
        text_encoder = load_text_encoder(config.encoders.text, config.encoders)
        result = _train_prototype(store, products, pairs, text_encoder, config, name, held_out, resume, progress)
    else:
        result = _train_contrastive(store, products, pairs, config, name, held_out, resume, progress)
    save_trained_products(store.models_dir / name, [p.id for p in products])
    if activate:
        store.config({"embedding.kind": "trained", "embedding.model": name}).save(store.config_path)
    return result


def _train_contrastive(store: Store, products, pairs, config: Config, name: str, held_out, resume: bool,
                       progress: bool) -> TrainResult:
    """The contrastive objective, in one process or ``training.nproc`` DDP workers; saved with its report."""
    # With unfrozen top layers/blocks the cached features are what enters them (token states, maps).
    text_encoder = load_text_encoder(with_top_blocks(config.encoders.text, config.training.unfreeze_text_layers),
                                     config.encoders)
    text_top = text_encoder.top() if config.training.unfreeze_text_layers else None
    image_name = with_top_blocks(config.encoders.image, config.training.unfreeze_blocks)
    image_encoder = load_image_encoder(image_name, config.encoders)
    image_top = image_encoder.top() if config.training.unfreeze_blocks else None
    cache = FeatureCache(store.root / "cache" / "features.sqlite")
    towers = tower_config(config.training, text_encoder.name, image_name,
                          text_top.out_dim if text_top is not None else text_encoder.dim,
                          image_top.out_dim if image_top is not None else image_encoder.dim,
                          image_input_dim=image_encoder.dim if image_top is not None else 0,
                          text_input_dim=text_encoder.dim if text_top is not None else 0)
    data = build_training_set(products, pairs, text_encoder, image_encoder, cache, config.training,
                              ngrams=towers.ngram_hasher(), ngram_idf=towers.ngram_idf, progress=progress)
    folder = store.models_dir / name
    if config.training.nproc != 1:  # features are cached above, once; the workers only train
        from vitrine.training.distributed import train_distributed

        run = train_distributed(data, config.training, towers, folder, config.training.nproc, image_top=image_top,
                                text_top=text_top, resume=resume, progress=progress)
        result, temperature = run.result, run.temperature
    else:
        trainer = ContrastiveTrainer(data, config.training, towers, folder, image_top=image_top, text_top=text_top,
                                     progress=progress)
        result = trainer.fit(resume=resume)
        trainer.model.save(folder)
        temperature = float(trainer.loss.temperature.detach())
    plot_losses(result.losses, folder / "loss.png", title=f"{name}: contrastive training loss")
    report = {"name": name, "products": len(products), "examples": len(data), "keyword_examples": data.keyword_examples,
              "held_out_products": sorted(held_out), "training": asdict(config.training), "result": asdict(result),
              "temperature": temperature}
    write_atomic(folder / "training.json", json.dumps(report, indent=2).encode())
    return result


def _train_prototype(store: Store, products, pairs, text_encoder, config: Config, name: str,
                     held_out, resume: bool, progress: bool) -> TrainResult:
    """The staged prototype-ID objective (``vitrine.training.stages``), saved and reported like the contrastive one."""
    folder = store.models_dir / name
    cache = FeatureCache(store.root / "cache" / "features.sqlite")
    inputs = StageInputs(products, list(pairs), text_encoder, cache, config, progress)
    result, stages = train_prototype_stages(inputs, folder, resume=resume)
    if result.losses:
        plot_losses(result.losses, folder / "loss.png", title=f"{name}: last stage's training loss")
    report = {"name": name, "objective": "prototype", "products": len(products), "held_out_products": sorted(held_out),
              "training": asdict(config.training), "prototype": asdict(config.prototype), "result": asdict(result),
              **stages}
    write_atomic(folder / "training.json", json.dumps(report, indent=2).encode())
    return result


def trained_like(config: Config, folder: Path) -> Config:
    """``config`` with the ``[training]`` and ``[prototype]`` settings the model in ``folder`` was trained with
    (from its ``training.json``), so that another model can be trained the same way: the reranker's
    cross-fitted fold retrievers must resemble the towers they stand in for, whatever flags trained those."""
    try:
        report = json.loads((Path(folder) / "training.json").read_text())
    except (OSError, ValueError):
        log.warning("%s: no readable training.json; new models train with the store's own settings", folder)
        return config
    overrides = {}
    for section in TRAINED_SECTIONS:
        known = {field.name for field in fields(getattr(config, section))}
        overrides.update({f"{section}.{key}": value for key, value in report.get(section, {}).items() if key in known})
    overrides.update(_backbones_of(Path(folder)))
    return config.with_overrides(overrides, source=str(Path(folder) / "training.json"))


def _backbones_of(folder: Path) -> dict[str, str]:
    """``encoders.text`` / ``encoders.image`` as the model in ``folder`` was trained on them (its ``config.json``
    names them with the ``/topN`` its training unfroze, which the training settings add back): the store's
    own may have changed since, or never named them (``--set`` on the training command)."""
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {f"encoders.{kind}": with_top_blocks(saved[f"{kind}_encoder"], 0) for kind in ("text", "image")
            if isinstance(saved.get(f"{kind}_encoder"), str)}
