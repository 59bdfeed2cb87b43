"""The vision branch per photo: salient box, ImageNet classes, and zero-shot tags in the trained space.

Zero-shot tags are catalog keywords (the TF-IDF keywords of ``vitrine.training.keywords``) scored
against the salient region: the region's pooled backbone features go through the trained *query image*
tower, each keyword through the *product text* tower (a keyword is a very short product text), and the
cosine of the two says how well the keyword describes what the photo shows.

``VisionWorker`` is what ``vitrine.parallel.map_batches`` runs, in this process or on Ray: it is built
once per worker (the networks load there) and returns plain records, so both engines give the same output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitrine.config import GovernanceConfig
from vitrine.embedding.towers import TwoTowerModel
from vitrine.errors import VitrineError
from vitrine.governance.saliency import Box, SaliencyModel


@dataclass(frozen=True)
class TagVocabulary:
    """Keywords and their unit vectors in the trained space (product text tower)."""

    words: tuple[str, ...]
    vectors: np.ndarray


@dataclass(frozen=True)
class PhotoJuice:
    """What the vision branch found in one photo."""

    size: tuple[int, int]
    box: Box
    kept_area: float
    labels: tuple[tuple[str, float], ...]
    """ImageNet classes in the salient region, with probabilities."""
    tags: tuple[tuple[str, float], ...]
    """Catalog keywords that describe the salient region, with their cosine in the trained space."""
    heat: np.ndarray

    @property
    def classes(self) -> tuple[str, ...]:
        """Every object class found: zero-shot tags first (catalog words), then ImageNet labels."""
        return tuple(dict.fromkeys([t for t, _ in self.tags] + [label for label, _ in self.labels]))


def vision_factory(config: GovernanceConfig, model_dir: str | None,
                   vocabulary: TagVocabulary | None) -> Callable[[], Callable[[list[str]], list[PhotoJuice]]]:
    """A picklable factory for ``map_batches``: each worker builds one ``VisionWorker``."""
    def factory() -> Callable[[list[str]], list[PhotoJuice]]:
        return VisionWorker(config, model_dir, vocabulary)
    return factory


class VisionWorker:
    """One photo batch at a time, on one thread: float sums then add up in the same order in this
    process and in every Ray worker (so the engines agree to the bit), and Ray scales by workers."""

    threads = 1

    def __init__(self, config: GovernanceConfig, model_dir: str | None, vocabulary: TagVocabulary | None) -> None:
        self.config = config
        self.saliency = SaliencyModel(config)
        self.model = load_frozen_towers(model_dir) if model_dir else None
        self.vocabulary = vocabulary

    def __call__(self, photos: list[str]) -> list[PhotoJuice]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            seen = [self.saliency.analyse(photo) for photo in photos]
            tags = self._tags(np.stack([s.features for s in seen])) if seen else []
        finally:
            torch.set_num_threads(before)
        return [PhotoJuice(s.size, s.box, round(s.kept_area, 4), s.labels, t, s.heat) for s, t in zip(seen, tags)]

    def _tags(self, features: np.ndarray) -> list[tuple[tuple[str, float], ...]]:
        if self.model is None or self.vocabulary is None or not self.vocabulary.words:
            return [() for _ in features]
        with torch.inference_mode():
            photos = torch.nn.functional.normalize(self.model.query_image(torch.from_numpy(features)), dim=-1).numpy()
        scores = photos @ self.vocabulary.vectors.T
        out = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[: self.config.tag_top]
            out.append(tuple((self.vocabulary.words[i], round(float(row[i]), 4)) for i in order
                             if row[i] >= self.config.tag_min_score))
        return out


def load_frozen_towers(model_dir: str | Path) -> TwoTowerModel:
    model = TwoTowerModel.load(Path(model_dir)).eval()
    if model.config.fine_tunes_backbone:
        raise VitrineError(f"{model_dir}: governance needs towers trained on the frozen backbone "
                           "(training.unfreeze_blocks = 0)")
    return model


def tag_vocabulary(words: Sequence[str], text_features: np.ndarray, model: TwoTowerModel) -> TagVocabulary:
    """Keywords as unit vectors of the product text tower."""
    if not len(words):
        return TagVocabulary((), np.zeros((0, model.config.dim), dtype=np.float32))
    with torch.inference_mode():
        vectors = model.text_vectors(model.product_text, torch.from_numpy(text_features), model.ngram_batch(words))
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    return TagVocabulary(tuple(words), vectors.numpy().astype(np.float32))
