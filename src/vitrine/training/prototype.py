"""Prototype-ID training (stages 2 and 3 of Pailitao-VL's embedding): classify every query and every
product into its prototype with an additive angular margin, optionally keeping an InfoNCE term.

It is the contrastive trainer with another step: the towers, data, dev score (early stopping on
product retrieval, which is what serving uses), checkpoints and resume are shared; the prototype
head is updated with sparse SGD on the rows each step compared with, and saved in the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitrine.config import PrototypeConfig, TrainingConfig
from vitrine.embedding.prototypes import PrototypeHead, PrototypeLibrary
from vitrine.embedding.towers import TowerConfig
from vitrine.training.data import TrainingSet
from vitrine.training.losses import ArcFace, SymmetricInfoNCE
from vitrine.training.masks import batch_mask
from vitrine.training.prototype_negatives import PrototypeNeighbours, sample_columns
from vitrine.training.trainer import ContrastiveTrainer


def negatives_strategy(config: PrototypeConfig, prototypes: int) -> str:
    if config.negatives != "auto":
        return config.negatives
    return "all" if prototypes <= config.sample_above else "nearest"


class PrototypeTrainer(ContrastiveTrainer):
    def __init__(self, data: TrainingSet, config: TrainingConfig, prototype: PrototypeConfig, towers: TowerConfig,
                 folder: Path, library: PrototypeLibrary, head: PrototypeHead, *,
                 image_top: torch.nn.Module | None = None, text_top: torch.nn.Module | None = None,
                 start: dict[str, torch.Tensor] | None = None, matryoshka: bool = False,
                 progress: bool = True) -> None:
        super().__init__(data, config, towers, folder, image_top=image_top, text_top=text_top, progress=progress)
        if start is not None:  # the previous stage's towers (a new backbone top keeps its pretrained weights)
            self.model.load_state_dict(start, strict=False)
        self.prototype, self.library, self.head = prototype, library, head
        self.margin = ArcFace(prototype.margin, prototype.temperature)
        self.margin_dims = self.loss.dims if matryoshka else [towers.dim]
        self.strategy = negatives_strategy(prototype, len(head))
        self.neighbours = PrototypeNeighbours(prototype.refresh, prototype.sample_above, seed=config.seed) \
            if self.strategy == "nearest" else None
        self.best_head: torch.Tensor | None = None

    def train_step(self, batch: np.ndarray) -> float:
        t = self._tensors
        positives = self.data.positive[batch]
        queries = self._queries(batch)
        products = self._products(positives)
        query_targets = self.library.example_prototype[batch]
        product_targets = self.library.product_prototype[positives]
        if self.neighbours is not None and self.neighbours.due(self.step):
            self.neighbours.refresh(self.head.unit_rows(), self.step)
        columns = sample_columns(np.concatenate([query_targets, product_targets]), len(self.head), self.strategy,
                                 self.prototype.sample_ratio, self.rng, self.neighbours)
        column_tensor = None if columns is None else torch.from_numpy(columns)
        rows = self.head.rows(column_tensor)
        loss = self._margin_loss(queries, rows, self._as_columns(query_targets, columns))
        if self.prototype.product_weight > 0:
            loss = loss + self.prototype.product_weight * self._margin_loss(
                products, rows, self._as_columns(product_targets, columns))
        if self.prototype.infonce_weight > 0:
            ignore = batch_mask(self.data.equivalent, positives, positives, [self.data.relevant[i] for i in batch])
            loss = loss + self.prototype.infonce_weight * self._info_nce(queries, products, ignore, t["weight"][batch])
        self.step_optimizers(loss)
        self.head.update(column_tensor, rows.grad, self.prototype.head_lr * self.lr_factor())
        self.step += 1
        return float(loss.detach())

    def _info_nce(self, queries, products, ignore, weights) -> torch.Tensor:
        if isinstance(self.loss.loss, SymmetricInfoNCE):
            return self.loss(queries, products, ignore, weights)
        return self.loss(queries, products, torch.arange(len(queries)), ignore, weights)

    def _margin_loss(self, vectors: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """ArcFace against the chosen prototype rows, at every trained prefix width (Matryoshka)."""
        losses = [self.margin(F.normalize(vectors[:, :d], dim=-1) @ F.normalize(rows[:, :d], dim=-1).T, targets)
                  for d in self.margin_dims]
        return sum(losses) / len(losses)

    @staticmethod
    def _as_columns(targets: np.ndarray, columns: np.ndarray | None) -> torch.Tensor:
        """Prototype ids -> positions among the step's columns (-1 stays -1: no target)."""
        if columns is None:
            return torch.from_numpy(targets)
        positions = np.searchsorted(columns, targets)
        return torch.from_numpy(np.where(targets >= 0, positions, -1))

    def _score_dev(self) -> None:
        before = self.best
        super()._score_dev()
        if self.best is not before:  # a new best epoch: keep its head with its towers
            self.best_head = self.head.weight.clone()

    def fit(self, *, resume: bool = False):
        result = super().fit(resume=resume)
        if self.best_head is not None:
            self.head.weight.copy_(self.best_head)
        return result

    def save_checkpoint(self) -> None:
        super().save_checkpoint()
        path = self.folder / "head-checkpoint.pt"
        torch.save({"weight": self.head.weight, "best": self.best_head}, self.folder / ".head-checkpoint.tmp")
        (self.folder / ".head-checkpoint.tmp").replace(path)

    def load_checkpoint(self) -> None:
        super().load_checkpoint()
        state = torch.load(self.folder / "head-checkpoint.pt", weights_only=True)
        self.head.weight.copy_(state["weight"])
        self.best_head = state["best"]
        if self.neighbours is not None:  # rebuilt from the restored head at the next step
            self.neighbours.refreshed_at = None
