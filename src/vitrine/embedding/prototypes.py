"""Prototype IDs (Pailitao-VL): a library that anchors every training product to a global ID, and the
U x D prototype head whose rows are those IDs' directions in the embedding space.

The library comes from labels where a catalog has them (a product's group, else the product itself:
one Grocery fine class, one Shopee label_group) or from clustering stage-1 product embeddings with
FAISS k-means, purified by leaving each cluster's farthest members unassigned (-1).

The head is trained by the prototype trainer with sparse row updates, and dropped at serving time;
it is kept beside the towers for ID recognition (query -> nearest prototypes -> their products).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vitrine.config import write_atomic
from vitrine.errors import StoreError, VitrineError

LIBRARY_FILE = "prototypes.npz"
HEAD_FILE = "head.safetensors"


@dataclass
class PrototypeLibrary:
    """Prototype names and the prototype of every training product and example (-1: none)."""

    names: list[str]
    product_ids: list[str]
    product_prototype: np.ndarray
    """Per product row of the training set, its prototype (-1: not a training target)."""
    example_prototype: np.ndarray
    """Per training example, the prototype of the product it should find."""
    source: str

    def __len__(self) -> int:
        return len(self.names)

    def members(self) -> list[list[str]]:
        """Product ids of each prototype."""
        groups: list[list[str]] = [[] for _ in self.names]
        for product_id, prototype in zip(self.product_ids, self.product_prototype):
            if prototype >= 0:
                groups[prototype].append(product_id)
        return groups

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LIBRARY_FILE
        tmp = folder / f".{LIBRARY_FILE}.tmp.npz"
        np.savez(tmp, names=np.array(self.names, dtype=str), product_ids=np.array(self.product_ids, dtype=str),
                 product_prototype=self.product_prototype.astype(np.int64),
                 example_prototype=self.example_prototype.astype(np.int64), source=np.array(self.source))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder: Path) -> "PrototypeLibrary":
        path = Path(folder) / LIBRARY_FILE
        try:
            with np.load(path) as saved:
                return cls(saved["names"].tolist(), saved["product_ids"].tolist(), saved["product_prototype"],
                           saved["example_prototype"], str(saved["source"]))
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"{path}: cannot read the prototype library ({exc})") from None


def library_from_labels(product_ids: Sequence[str], groups: Sequence[str | None],
                        positives: np.ndarray) -> PrototypeLibrary:
    """One prototype per label (a product's group, else its own id) that some training example points
    at; every product with that label belongs to it. Labels no example points at (validation groups,
    held-out products) get no prototype: training never sees them."""
    targeted = np.zeros(len(product_ids), dtype=bool)
    targeted[positives] = True
    labels = [group or f"product:{pid}" for pid, group in zip(product_ids, groups)]
    names = sorted({labels[row] for row in np.flatnonzero(targeted)})
    number = {name: i for i, name in enumerate(names)}
    product_prototype = np.array([number.get(label, -1) for label in labels], dtype=np.int64)
    return PrototypeLibrary(names, list(product_ids), product_prototype, product_prototype[positives], "labels")


def library_from_clusters(product_ids: Sequence[str], vectors: np.ndarray, positives: np.ndarray, count: int,
                          purify: float = 0.1, seed: int = 0) -> PrototypeLibrary:
    """FAISS k-means over the (stage-1) vectors of the targeted products; in each cluster the ``purify``
    share of members farthest from the centroid are left without a prototype (likely mis-clustered)."""
    import faiss

    rows = np.unique(positives)
    if count < 1 or count > len(rows):
        raise VitrineError(f"cannot make {count} prototype clusters from {len(rows)} training products")
    points = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    kmeans = faiss.Kmeans(points.shape[1], count, niter=20, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1)
    kmeans.train(points)
    similarity, cluster = kmeans.index.search(points, 1)
    similarity, cluster = similarity[:, 0], cluster[:, 0]
    keep = np.ones(len(rows), dtype=bool)
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        drop = int(np.floor(purify * len(members)))
        if drop:
            keep[members[np.argsort(similarity[members])[:drop]]] = False
    used = np.unique(cluster[keep])  # renumber: clusters emptied by purification disappear
    renumber = np.full(count, -1, dtype=np.int64)
    renumber[used] = np.arange(len(used))
    product_prototype = np.full(len(product_ids), -1, dtype=np.int64)
    product_prototype[rows[keep]] = renumber[cluster[keep]]
    names = [f"cluster:{i}" for i in range(len(used))]
    return PrototypeLibrary(names, list(product_ids), product_prototype, product_prototype[positives], "clusters")


def prototype_centroids(library: PrototypeLibrary, product_vectors: np.ndarray,
                        example_vectors: np.ndarray | None = None) -> np.ndarray:
    """Unit mean of each prototype's product (and example) embeddings: where the head's rows start."""
    dim = product_vectors.shape[1]
    sums = np.zeros((len(library), dim), dtype=np.float64)
    assigned = library.product_prototype >= 0
    np.add.at(sums, library.product_prototype[assigned], product_vectors[assigned])
    if example_vectors is not None:
        used = library.example_prototype >= 0
        np.add.at(sums, library.example_prototype[used], example_vectors[used])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


class PrototypeHead:
    """The U x D prototype matrix. Rows are read as unit vectors; a step gathers the rows it compares
    with (all, or a sample), and only those rows are updated (sparse SGD), so the optimiser keeps no
    state for the matrix and a float16 or memory-mapped matrix with U = 10^6 fits in memory."""

    def __init__(self, weight: torch.Tensor) -> None:
        if weight.dim() != 2:
            raise VitrineError(f"a prototype head needs a 2-d matrix, got shape {tuple(weight.shape)}")
        self.weight = weight

    @classmethod
    def from_centroids(cls, centroids: np.ndarray, dtype: str = "float32") -> "PrototypeHead":
        return cls(torch.from_numpy(np.ascontiguousarray(centroids)).to(_dtype(dtype)))

    @classmethod
    def random(cls, count: int, dim: int, dtype: str = "float32", seed: int = 0, memmap: Path | None = None,
               chunk: int = 65_536) -> "PrototypeHead":
        """Random unit rows (synthetic benchmarks); in a memory-mapped file at ``memmap`` if given."""
        torch_dtype = _dtype(dtype)
        if memmap is not None:
            array = np.lib.format.open_memmap(memmap, mode="w+", dtype=np.dtype(dtype), shape=(count, dim))
            weight = torch.from_numpy(array)
        else:
            weight = torch.empty(count, dim, dtype=torch_dtype)
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, count, chunk):  # in chunks: no full float32 copy at any moment
            rows = torch.randn(min(chunk, count - start), dim, generator=generator)
            weight[start:start + len(rows)] = F.normalize(rows, dim=-1).to(torch_dtype)
        return cls(weight)

    def __len__(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def rows(self, columns: torch.Tensor | None = None) -> torch.Tensor:
        """A float32 copy of the chosen rows (all when ``columns`` is None), a leaf that collects gradients."""
        chosen = self.weight if columns is None else self.weight[columns]
        return chosen.to(torch.float32, copy=True).requires_grad_(True)

    @torch.no_grad()
    def update(self, columns: torch.Tensor | None, gradient: torch.Tensor, lr: float) -> None:
        """SGD on the rows a step used, then back to unit length (only directions matter)."""
        current = (self.weight if columns is None else self.weight[columns]).float()
        moved = F.normalize(current - lr * gradient, dim=-1).to(self.weight.dtype)
        if columns is None:
            self.weight.copy_(moved)
        else:
            self.weight[columns] = moved

    @torch.no_grad()
    def unit_rows(self, chunk: int = 65_536) -> np.ndarray:
        """All rows as unit float32 vectors (for the neighbour table and for serving)."""
        return np.concatenate([F.normalize(self.weight[s:s + chunk].float(), dim=-1).numpy()
                               for s in range(0, len(self), chunk)])

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous()}, str(folder / f".{HEAD_FILE}.tmp"))
        (folder / f".{HEAD_FILE}.tmp").replace(folder / HEAD_FILE)
        write_atomic(folder / "head.json", json.dumps({"kind": "prototype-head", "prototypes": len(self),
                                                        "dim": self.dim, "dtype": str(self.weight.dtype)}).encode())

    @classmethod
    def load(cls, folder: Path) -> "PrototypeHead":
        path = Path(folder) / HEAD_FILE
        try:
            return cls(load_file(str(path))["weight"])
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"{path}: cannot load the prototype head ({exc})") from None


def _dtype(name: str) -> torch.dtype:
    kinds = {"float32": torch.float32, "float16": torch.float16}
    if name not in kinds:
        raise VitrineError(f"prototype.head_dtype must be float32 or float16, got {name!r}")
    return kinds[name]
