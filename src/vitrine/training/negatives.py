"""Where negatives come from, beyond the batch: a memory bank, other processes, and mined hard ones."""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import torch
import torch.distributed as dist


class MemoryBank:
    """A FIFO queue of past product embeddings (no gradient) with their product indices.

    Entries older than ``max_age`` steps are not served: the towers have moved on since they were
    made, and stale keys are easy negatives that teach nothing.
    """

    def __init__(self, size: int, dim: int, max_age: int | None = None) -> None:
        self.size, self.max_age = size, max_age
        self.vectors = torch.zeros(size, dim)
        self.labels = torch.full((size,), -1, dtype=torch.long)
        self.steps = torch.full((size,), -1, dtype=torch.long)
        self._head = 0

    def __len__(self) -> int:
        return int((self.labels >= 0).sum())

    @torch.no_grad()
    def push(self, vectors: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        vectors, labels = vectors.detach()[-self.size:], labels[-self.size:]
        slots = (torch.arange(len(vectors)) + self._head) % self.size
        self.vectors[slots] = vectors.to(self.vectors.dtype)
        self.labels[slots] = labels
        self.steps[slots] = step
        self._head = int((self._head + len(vectors)) % self.size)

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        live = self.labels >= 0
        if self.max_age is not None:
            live &= self.steps >= step - self.max_age
        return self.vectors[live], self.labels[live]


def gather_from_processes(tensor: torch.Tensor, *, local_first: bool = False) -> torch.Tensor:
    """Concatenate ``tensor`` from every DDP process (cross-device negatives); gradients flow back to
    the process each part came from. Every process must pass the same shape. Parts come in rank
    order, or with ``local_first`` this process's own part first (then the following ranks, wrapping
    round), so row i is still this process's row i. Without a process group it is the identity."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    if tensor.requires_grad:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated in favour of a private API; it works, and says so every run
            warnings.simplefilter("ignore", FutureWarning)
            parts = list(all_gather(tensor))
    else:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
    if local_first:
        rank = dist.get_rank()
        parts = parts[rank:] + parts[:rank]
    return torch.cat(parts, dim=0)


class HardNegativeMiner:
    """The products the current model ranks highest for a query, other than its positive.

    Product vectors are recomputed and re-indexed every ``refresh_every`` steps (an exact FAISS
    index: it is rebuilt often, and the catalog used in training fits in memory).
    """

    def __init__(self, count: int, refresh_every: int = 100) -> None:
        self.count, self.refresh_every = count, refresh_every
        self._index: faiss.Index | None = None
        self._refreshed_at: int | None = None

    def due(self, step: int) -> bool:
        return self._refreshed_at is None or step - self._refreshed_at >= self.refresh_every

    def refresh(self, product_vectors: np.ndarray, step: int) -> None:
        vectors = np.ascontiguousarray(product_vectors, dtype=np.float32)
        self._index = faiss.IndexFlatIP(vectors.shape[1])
        self._index.add(vectors)
        self._refreshed_at = step

    def mine(self, query_vectors: np.ndarray, positives: np.ndarray) -> np.ndarray:
        """``(B, count)`` product indices, best-scoring first, never the query's own positive (-1 pads)."""
        if self._index is None:
            raise RuntimeError("refresh() the miner before mining")
        depth = min(self.count + 1, self._index.ntotal)
        _, found = self._index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), depth)
        mined = np.full((len(found), self.count), -1, dtype=np.int64)
        for row, (candidates, positive) in enumerate(zip(found, positives)):
            kept = candidates[(candidates != positive) & (candidates >= 0)][: self.count]
            mined[row, : len(kept)] = kept
        return mined
