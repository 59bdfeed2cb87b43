"""The contrastive trainer: towers on cached features, negatives from every configured source.

One step: embed a batch of queries and their positive products; gather keys (the batch, other
processes, the memory bank, mined hard negatives); mask false negatives; symmetric InfoNCE (at every
Matryoshka prefix); AdamW. Each epoch ends with a checkpoint that ``fit(resume=True)`` continues from.
"""

from __future__ import annotations

import copy
import logging
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vitrine.config import TrainingConfig
from vitrine.embedding.towers import TowerConfig, TwoTowerModel
from vitrine.encoders.ngrams import NgramBatch
from vitrine.progress import progress_bar
from vitrine.training.data import TrainingSet
from vitrine.training.losses import InfoNCE, MatryoshkaLoss, SymmetricInfoNCE
from vitrine.training.masks import batch_mask
from vitrine.training.negatives import HardNegativeMiner, MemoryBank, gather_from_processes
from vitrine.training.visual import visual_task

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainResult:
    epochs: int
    steps: int
    seconds: float
    peak_rss_mb: float
    losses: list[float] = field(default_factory=list)
    """Mean loss of each epoch."""
    dev_scores: list[float] = field(default_factory=list)
    """Dev MRR after each epoch (empty without a dev split)."""
    best_epoch: int = 0
    """The epoch whose weights were kept (1-based; the last one without a dev split)."""


def tower_config(config: TrainingConfig, text_encoder: str, image_encoder: str, text_dim: int,
                 image_dim: int, image_input_dim: int = 0, text_input_dim: int = 0) -> TowerConfig:
    native = config.image_projection == "none"
    # Without an image projection the space is the image features': its width, and no prefix of it was
    # trained to stand alone.
    dim = image_dim if native else config.dim
    dims = [] if native else [int(d) for d in config.matryoshka.split(",") if d.strip()]
    return TowerConfig(text_encoder=text_encoder, image_encoder=image_encoder, text_dim=text_dim,
                       image_dim=image_dim, dim=dim, hidden=config.hidden, dropout=config.dropout,
                       image_dropout=config.image_dropout, image_projection=config.image_projection,
                       modal_gate=config.modal_gate, matryoshka=sorted(set(dims + [dim])),
                       temperature=config.temperature, image_input_dim=image_input_dim, text_input_dim=text_input_dim,
                       ngram_buckets=config.ngram_buckets, ngram_idf=config.ngram_idf)


class ContrastiveTrainer:
    def __init__(self, data: TrainingSet, config: TrainingConfig, towers: TowerConfig, folder: Path,
                 *, image_top: torch.nn.Module | None = None, text_top: torch.nn.Module | None = None,
                 progress: bool = True) -> None:
        torch.manual_seed(config.seed)
        self.data, self.config, self.folder, self.progress = data, config, Path(folder), progress
        self.model = TwoTowerModel(towers, image_top, text_top)
        if data.ngram_idf is not None and self.model.ngrams is not None:
            self.model.ngrams.idf.copy_(torch.from_numpy(data.ngram_idf))
        products = len(data.product_text)
        self.model.start_from_features(
            [torch.from_numpy(data.product_text), torch.from_numpy(data.query_text)],
            torch.from_numpy(np.concatenate([data.product_image[data.product_has_image],
                                             data.query_image[data.query_has_image]])),
            text_rows=np.concatenate([np.arange(products),
                                      products + data.query_text_index()[data.query_has_text]]))
        base = (SymmetricInfoNCE if config.symmetric else InfoNCE)(config.temperature, config.learn_temperature)
        self.loss = MatryoshkaLoss(base, towers.matryoshka)
        self.visual = visual_task(config.visual_task, self.model, config.mask_ratio)
        self.optimizer = torch.optim.AdamW(self._parameter_groups(), lr=config.lr, weight_decay=config.weight_decay)
        # The n-gram table is large and each step touches a few thousand of its rows: sparse gradients and a
        # lazy Adam keep a step's cost proportional to those rows, not to the table.
        self.sparse_optimizer = (torch.optim.SparseAdam(list(self.model.ngrams.parameters()),
                                                        lr=config.lr * config.ngram_lr_scale)
                                 if self.model.ngrams is not None else None)
        # The rates each group was set to; the schedule scales these, so a resumed run needs only ``step``.
        self._set_rates = [[group["lr"] for group in optimizer.param_groups] for optimizer in self._optimizers()]
        self.bank = MemoryBank(config.memory_bank, towers.dim, config.memory_max_age) if config.memory_bank else None
        self.miner = HardNegativeMiner(config.hard_negatives, config.hard_refresh) if config.hard_negatives else None
        self.rng = np.random.default_rng(config.seed)
        # Its own stream: the batch order must stay the same on every process of a distributed run.
        self.view_rng = np.random.default_rng([config.seed, 1])
        self.train_rows, self.dev_rows = dev_split(data, config.dev_fraction, config.seed)
        self.epoch = self.step = 0
        self.history: list[float] = []
        self.dev_scores: list[float] = []
        self.best: tuple[float, int, dict] | None = None  # (score, epoch, weights)
        self._tensors = {name: torch.from_numpy(getattr(data, name)) for name in (
            "product_text", "product_image", "product_has_image", "query_text", "query_image",
            "query_has_text", "query_has_image", "weight")}
        self._tensors["query_text_rows"] = torch.from_numpy(data.query_text_index())
        self.forward = self.step_loss
        """One step's (loss, keys); a distributed run swaps in the DDP-wrapped step (training.distributed)."""

    def _parameter_groups(self) -> list[dict]:
        backbone = [p for top in (self.model.image_top, self.model.text_top) if top is not None
                    for p in top.parameters()]
        sparse = list(self.model.ngrams.parameters()) if self.model.ngrams is not None else []
        held = {id(p) for p in backbone + sparse}
        rest = [p for p in self.model.parameters() if id(p) not in held] + list(self.loss.parameters())
        if self.visual is not None:
            rest += list(self.visual.parameters())
        groups = [{"params": rest}]
        if backbone:
            groups.append({"params": backbone, "lr": self.config.lr * self.config.backbone_lr_scale})
        return groups

    @property
    def steps_per_epoch(self) -> int:
        return max(1, -(-len(self.train_rows) // self.config.batch_size))

    def fit(self, *, resume: bool = False) -> TrainResult:
        if resume and (self.folder / CHECKPOINT).is_file():
            self.load_checkpoint()
            log.info("resumed at epoch %d, step %d", self.epoch, self.step)
        start = time.perf_counter()
        bar = progress_bar(total=self.config.epochs * self.steps_per_epoch, initial=self.epoch * self.steps_per_epoch,
                           enabled=self.progress, desc="train", unit=" steps")
        while self.epoch < self.config.epochs and not self._patience_ran_out():
            self.model.train()
            losses = []
            for batch in self.epoch_batches():
                losses.append(self.train_step(batch))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", t=f"{float(self.loss.temperature.detach()):.3f}")
            self.history.append(float(np.mean(losses)))
            self.epoch += 1
            self._score_dev()
            self.save_checkpoint()
        bar.close()
        best_epoch = self.epoch
        if self.best is not None:
            self.model.load_state_dict(self.best[2])
            best_epoch = self.best[1]
        self.model.eval()
        return TrainResult(self.epoch, self.step, time.perf_counter() - start, _peak_rss_mb(), list(self.history),
                           list(self.dev_scores), best_epoch)

    def epoch_batches(self) -> list[np.ndarray]:
        """This epoch's batches of training rows (a distributed run takes its shard of each)."""
        return np.array_split(self.rng.permutation(self.train_rows), self.steps_per_epoch)

    def _score_dev(self) -> None:
        if not len(self.dev_rows):
            return
        score = self.dev_mrr()
        self.dev_scores.append(score)
        # A cosine schedule is meant to end at its best: it runs every epoch and keeps its last weights, so
        # dev (near its ceiling on small catalogs, where its wiggles would pick the epoch) only reports.
        if self.config.lr_schedule == "constant" and (self.best is None or score > self.best[0]):
            self.best = (score, self.epoch, copy.deepcopy(self.model.state_dict()))

    def _patience_ran_out(self) -> bool:
        return self.best is not None and self.epoch - self.best[1] >= self.config.patience

    @torch.no_grad()
    def dev_mrr(self, chunk: int = 256) -> float:
        """Mean reciprocal rank of each dev example's product among all training products.

        Products that are not its negatives (same item or group, keyword twins, other products
        graded relevant to the query) do not count against it, as in training.
        """
        rows = self.dev_rows
        self.model.eval()
        products = torch.from_numpy(self.all_product_vectors())
        ranks = []
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            queries = self._queries(part)
            positives = self.data.positive[part]
            scores = queries @ products.T
            target = scores.gather(1, torch.from_numpy(positives)[:, None])
            ignore = batch_mask(self.data.equivalent, positives, np.arange(len(products)),
                                [self.data.relevant[i] for i in part])
            ranks.append(((scores > target) & ~ignore).sum(dim=1) + 1)
        return float((1.0 / torch.cat(ranks).float()).mean())

    def train_step(self, batch: np.ndarray) -> float:
        loss, keys = self.forward(batch)
        self.step_optimizers(loss)
        if self.bank is not None:
            self.bank.push(keys[: len(batch)].detach(), torch.from_numpy(self.data.positive[batch]), self.step)
        self.step += 1
        return float(loss.detach())

    def step_loss(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of one batch, and its keys (this process's positives first, then the rest)."""
        t = self._tensors
        positives = self.data.positive[batch]
        queries = self._queries(batch)
        keys = self._products(positives)
        key_rows = positives
        # Own positives first on every process, so key i is query i's positive on each of them.
        keys, key_rows = gather_from_processes(keys, local_first=True), self._gather_rows(key_rows)
        extra_keys, extra_rows = self._extra_negatives(queries, positives)
        if extra_keys is not None:
            keys, key_rows = torch.cat([keys, extra_keys]), np.concatenate([key_rows, extra_rows])
        ignore = batch_mask(self.data.equivalent, positives, key_rows, [self.data.relevant[i] for i in batch])
        weights = t["weight"][batch]
        if isinstance(self.loss.loss, SymmetricInfoNCE):
            loss = self.loss(queries, keys, ignore, weights)
        else:
            loss = self.loss(queries, keys, torch.arange(len(batch)), ignore, weights)
        if self.visual is not None:
            loss = loss + self.config.visual_weight * self._visual_loss(batch)
        return loss, keys

    def _visual_loss(self, batch: np.ndarray) -> torch.Tensor:
        photos = batch[self.data.query_has_image[batch]][: self.config.visual_batch]
        if len(photos) < 2:  # a contrastive task needs another image to tell apart
            return torch.zeros(())
        return self.visual(self.model, self._tensors["query_image"][torch.from_numpy(photos)])

    def _products(self, rows: np.ndarray) -> torch.Tensor:
        """Product vectors of ``rows``; repeated rows are computed once (photos of one product share a batch)."""
        t = self._tensors
        unique, inverse = np.unique(rows, return_inverse=True)
        index = torch.from_numpy(unique)
        vectors = self.model.products(t["product_text"][index], t["product_image"][index],
                                      t["product_has_image"][index], ngram_rows(self.data.product_ngrams, unique))
        return vectors[torch.from_numpy(inverse.reshape(-1))]

    def _queries(self, rows: np.ndarray) -> torch.Tensor:
        t = self._tensors
        return self.model.queries(t["query_text"][t["query_text_rows"][rows]], self._query_images(rows),
                                  t["query_has_text"][rows], t["query_has_image"][rows],
                                  ngram_rows(self.data.query_ngrams, rows))

    def _query_images(self, rows: np.ndarray) -> torch.Tensor:
        """The photos' features; while training with extra views, each photo as itself or one of its views."""
        views = self.data.query_image_views
        if views is None or not self.model.training:
            return self._tensors["query_image"][rows]
        choice = self.view_rng.integers(0, len(views) + 1, size=len(rows))  # 0: the photo as shot
        out = self.data.query_image[rows].copy()
        shown = choice > 0
        out[shown] = views[choice[shown] - 1, rows[shown]]
        return torch.from_numpy(out)

    def step_optimizers(self, loss: torch.Tensor) -> None:
        """Backward and one update of every optimizer (the dense one, and the n-gram table's sparse one), each
        parameter group at its set rate times the schedule's factor for this step."""
        optimizers = self._optimizers()
        factor = self.lr_factor()
        for optimizer, rates in zip(optimizers, self._set_rates):
            for group, rate in zip(optimizer.param_groups, rates):
                group["lr"] = rate * factor
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        """The dense optimizer, and the n-gram table's sparse one when there is a table."""
        return [self.optimizer] + ([self.sparse_optimizer] if self.sparse_optimizer is not None else [])

    def lr_factor(self) -> float:
        """The learning-rate schedule at this step: 1 keeps the set rates (``training.lr_schedule``)."""
        if self.config.lr_schedule == "constant":
            return 1.0
        total = self.config.epochs * self.steps_per_epoch
        return 0.5 * (1.0 + math.cos(math.pi * min(self.step, total) / total))

    def _gather_rows(self, rows: np.ndarray) -> np.ndarray:
        return gather_from_processes(torch.from_numpy(rows), local_first=True).numpy()

    def _extra_negatives(self, queries: torch.Tensor, positives: np.ndarray):
        keys, rows = [], []
        if self.bank is not None and len(self.bank):
            vectors, labels = self.bank.get(self.step)
            keys.append(vectors)
            rows.append(labels.numpy())
        if self.miner is not None:
            if self.miner.due(self.step):
                self.miner.refresh(self.all_product_vectors(), self.step)
            mined = self.miner.mine(queries.detach().numpy(), positives)
            unique = np.unique(mined[mined >= 0])
            if len(unique):
                keys.append(self._products(unique))  # with gradient: hard negatives are pushed away
                rows.append(unique)
        if not keys:
            return None, None
        return torch.cat(keys), np.concatenate(rows)

    @torch.no_grad()
    @torch.no_grad()
    def all_product_vectors(self, chunk: int = 1024) -> np.ndarray:
        # In chunks: through a trainable backbone top, all products at once would hold every activation.
        was_training = self.model.training
        self.model.eval()
        rows = np.arange(len(self.data.product_ids))
        vectors = np.concatenate([self._products(rows[start:start + chunk]).numpy()
                                  for start in range(0, len(rows), chunk)])
        self.model.train(was_training)
        return vectors

    def save_checkpoint(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "loss": self.loss.state_dict(),
                 "visual": self.visual.state_dict() if self.visual is not None else {},
                 "optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "step": self.step,
                 "sparse_optimizer": self.sparse_optimizer.state_dict() if self.sparse_optimizer is not None else {},
                 "history": self.history, "dev_scores": self.dev_scores, "best": self.best,
                 "rng": self.rng.bit_generator.state, "view_rng": self.view_rng.bit_generator.state,
                 "torch_rng": torch.get_rng_state()}
        tmp = self.folder / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        tmp.replace(self.folder / CHECKPOINT)

    def load_checkpoint(self) -> None:
        state = torch.load(self.folder / CHECKPOINT, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        if self.visual is not None:
            self.visual.load_state_dict(state.get("visual", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sparse_optimizer is not None:
            self.sparse_optimizer.load_state_dict(state["sparse_optimizer"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        self.dev_scores, self.best = state["dev_scores"], state["best"]
        self.rng.bit_generator.state = state["rng"]
        if "view_rng" in state:
            self.view_rng.bit_generator.state = state["view_rng"]
        torch.set_rng_state(state["torch_rng"])


def ngram_rows(matrix, rows: np.ndarray | slice) -> NgramBatch | None:
    """The n-gram input of some rows of a training set's n-gram matrix (None when the set has none)."""
    return NgramBatch.from_csr(matrix[rows]) if matrix is not None else None


def dev_split(data: TrainingSet, fraction: float, seed: int, cap: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, dev rows): whole queries held back, never keyword examples; at most ``cap`` dev rows.

    Too few distinct queries (under 20) make a dev score noise, so then there is no dev split.
    """
    rows = np.arange(len(data))
    real = sorted({key for key in data.query_keys if key and not key.startswith("keyword:")})
    if fraction <= 0 or len(real) < 20:
        return rows, rows[:0]
    rng = np.random.default_rng(seed + 1)
    held = set(rng.choice(real, size=max(1, round(fraction * len(real))), replace=False).tolist())
    is_dev = np.array([key in held for key in data.query_keys])
    dev = rows[is_dev]
    if len(dev) > cap:
        dev = np.sort(rng.choice(dev, size=cap, replace=False))
    return rows[~is_dev], dev


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plot_losses(history: list[float], path: Path, title: str = "training loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(range(1, len(history) + 1), history, marker="o", markersize=3)
    axis.set_xlabel("epoch")
    axis.set_ylabel("mean loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
