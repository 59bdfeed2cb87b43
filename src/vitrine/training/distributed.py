"""Training in N processes with torch DDP (gloo on CPU): ``vitrine train --nproc N``.

The parent computes the cached backbone features once, then spawns N workers that each build the same
trainer. Every epoch all ranks draw the same seeded permutation and cut it into the same global
batches; rank r takes the r-th of N equal shards of each batch (the epoch is padded by wrapping round,
as ``DistributedSampler`` does, so every all-gather sees equal shapes). Each rank embeds its shard,
gathers every rank's product vectors as negatives (``gather_from_processes``, with gradients), and DDP
averages the gradients, so a step is the single-process step over the global batch with the work split
N ways. Rank 0 shows progress, writes checkpoints and saves the model; every rank reports a digest of
its parameters, and the parent refuses a run whose ranks drifted apart.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vitrine.config import TrainingConfig
from vitrine.embedding.towers import TowerConfig
from vitrine.errors import VitrineError
from vitrine.training.data import TrainingSet
from vitrine.training.trainer import ContrastiveTrainer, TrainResult


@dataclass
class DistributedResult:
    result: TrainResult
    """Rank 0's result (losses are rank 0's share of each step)."""
    temperature: float
    digests: list[str]
    """A hash of every rank's parameters after training, in rank order (equal when in sync)."""


def shard_batches(permutation: np.ndarray, steps: int, rank: int, world: int) -> list[np.ndarray]:
    """Rank ``rank``'s shard of each of ``steps`` global batches cut from ``permutation``.

    Shards are disjoint within a step, equal in size, and together cover the permutation; the few
    rows needed to even them out are taken again from its start.
    """
    per_rank = -(-len(permutation) // (steps * world))
    total = per_rank * steps * world
    padded = np.resize(permutation, total)  # np.resize repeats from the start
    return list(padded.reshape(steps, world, per_rank)[:, rank])


class _TrainingStep(nn.Module):
    """Every trainable part of a trainer as one module whose forward is one step's loss, so DDP sees
    exactly one forward per step and can find parameters a step did not use (no photo, no hard negative)."""

    def __init__(self, trainer: ContrastiveTrainer) -> None:
        super().__init__()
        self.model, self.loss = trainer.model, trainer.loss
        if trainer.visual is not None:
            self.visual = trainer.visual
        self._step = trainer.step_loss

    def forward(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self._step(batch)


class DistributedTrainer(ContrastiveTrainer):
    """The contrastive trainer on one rank of an initialised process group."""

    def __init__(self, data: TrainingSet, config: TrainingConfig, towers: TowerConfig, folder: Path, **kwargs) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        super().__init__(data, config, towers, folder, **kwargs)
        torch.manual_seed(config.seed + 1000 * self.rank)  # dropout differs per rank; weights come from rank 0
        # DDP broadcasts rank 0's parameters now and averages gradients in every backward.
        self.ddp = DistributedDataParallel(_TrainingStep(self), find_unused_parameters=True)
        self.forward = self.ddp

    def epoch_batches(self) -> list[np.ndarray]:
        return shard_batches(self.rng.permutation(self.train_rows), self.steps_per_epoch, self.rank, self.world)

    def dev_mrr(self, chunk: int = 256) -> float:
        # Every rank scores the same weights; rank 0's score is used by all, so early stopping
        # can never split the ranks (one stops, the other waits in a collective forever).
        score = torch.tensor([super().dev_mrr(chunk)], dtype=torch.float64)
        dist.broadcast(score, src=0)
        return float(score)

    def save_checkpoint(self) -> None:
        if self.rank == 0:
            super().save_checkpoint()


def parameter_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_distributed(data: TrainingSet, config: TrainingConfig, towers: TowerConfig, folder: Path, nproc: int, *,
                      image_top: nn.Module | None = None, text_top: nn.Module | None = None, resume: bool = False,
                      progress: bool = True, save: bool = True) -> DistributedResult:
    """Train in ``nproc`` spawned processes; rank 0 saves the model in ``folder`` (unless ``save`` is off)."""
    if nproc < 2:
        raise VitrineError(f"distributed training needs at least 2 processes (training.nproc / --nproc), got {nproc}")
    threads = max(1, torch.get_num_threads() // nproc)  # the cores are shared between the ranks
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.spawn(_worker, nprocs=nproc, join=True,
             args=(nproc, _free_port(), threads, data, config, towers, Path(folder), image_top, text_top, resume,
                   progress, save, results))
    reports = sorted((results.get() for _ in range(nproc)), key=lambda report: report[0])
    digests = [digest for _, digest, _, _ in reports]
    _, _, result, temperature = reports[0]
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks ended with different parameters: {digests}")
    return DistributedResult(result, temperature, digests)


def _worker(rank: int, world: int, port: int, threads: int, data: TrainingSet, config: TrainingConfig,
            towers: TowerConfig, folder: Path, image_top: nn.Module | None, text_top: nn.Module | None,
            resume: bool, progress: bool, save: bool, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    # The trainer keeps its tensors on the CPU, so gloo; NCCL would need the towers on a GPU.
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = DistributedTrainer(data, config, towers, folder, image_top=image_top, text_top=text_top,
                                     progress=progress and rank == 0)
        result = trainer.fit(resume=resume)
        if rank == 0 and save:
            trainer.model.save(folder)
        temperature = float(trainer.loss.temperature.detach())
        results.put((rank, parameter_digest(trainer.ddp.module), result if rank == 0 else None, temperature))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
