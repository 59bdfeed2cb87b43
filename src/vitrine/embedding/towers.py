"""Trainable towers over frozen backbone features (MAKE: three encoders, one gated fusion).

- ``QueryTower``: the query's text through its *own* projection (queries are short, titles long),
  a query photo through the image projection.
- ``ProductTower``: title/description projection + image projection + a ``ModalGate`` that predicts,
  per product, how much its title and its image should weigh (Modal Adaptation).
- Optionally an ``NgramEmbedding`` (hashed word and character n-grams, shared by both text towers) added
  to each text projection: codes, sizes and words the pretrained text model reads poorly get vectors.

Every output is L2-normalised. With Matryoshka training, any prefix in ``matryoshka`` can be used
on its own after renormalising.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vitrine.config import write_atomic
from vitrine.encoders.ngrams import NgramBatch, NgramHasher
from vitrine.encoders.registry import load_image_top, load_text_top, parse_image_encoder
from vitrine.errors import StoreError

IMAGE_PROJECTIONS = ("mlp", "none")

@dataclass
class TowerConfig:
    text_encoder: str = "minilm"
    image_encoder: str = "efficientnet-lite0"
    text_dim: int = 384
    image_dim: int = 1280
    dim: int = 256
    hidden: int = 1024
    dropout: float = 0.1
    image_dropout: float = 0.2
    """Dropout on the image backbone features (feature-space augmentation for photos)."""
    modal_gate: bool = True
    """Predict per-product title/image weights; off = a fixed 50/50 blend."""
    shared_image_projection: bool = True
    """Query photos and product images share one projection (they are both photos of products)."""
    matryoshka: list[int] = field(default_factory=lambda: [64, 128, 256])
    temperature: float = 0.05
    image_input_dim: int = 0
    """Width of the image input when it is a flattened feature map for a trainable backbone top
    (``image_encoder`` named ``.../topN``); 0 means pooled features of width ``image_dim``."""
    text_input_dim: int = 0
    """Width of the text input when it is flattened token states for trainable top layers of the text
    model (``text_encoder`` named ``.../topN``); 0 means pooled features of width ``text_dim``."""
    ngram_buckets: int = 0
    """Hash buckets of the n-gram embedding added to the text towers (0 = none)."""
    ngram_words: int = 2
    ngram_chars: int = 3
    ngram_idf: bool = False
    """Weight each n-gram by its inverse document frequency over the training catalog (kept in the model)."""
    image_projection: str = "mlp"
    """``mlp``: image features reach the space through a trained projection; ``none``: the backbone's pooled
    features *are* the image side of the space (``dim`` = ``image_dim``), moved only by fine-tuned backbone
    blocks, and the text towers learn to map into it (as LiT locks the image tower)."""

    def __post_init__(self) -> None:
        if self.image_projection not in IMAGE_PROJECTIONS:
            raise ValueError(f"image_projection must be one of {IMAGE_PROJECTIONS}, not {self.image_projection!r}")
        if self.image_projection == "none" and self.dim != self.image_dim:
            raise ValueError(f"without an image projection the space is the image features': dim must be "
                             f"image_dim ({self.image_dim}), not {self.dim}")

    def ngram_hasher(self) -> NgramHasher | None:
        return NgramHasher(self.ngram_buckets, self.ngram_words, self.ngram_chars) if self.ngram_buckets else None

    @property
    def image_input_width(self) -> int:
        return self.image_input_dim or self.image_dim

    @property
    def text_input_width(self) -> int:
        return self.text_input_dim or self.text_dim

    @property
    def fine_tunes_backbone(self) -> bool:
        return parse_image_encoder(self.image_encoder)[2] > 0

    @property
    def fine_tunes_text(self) -> bool:
        return self.text_input_dim > 0


class Projection(nn.Module):
    """A residual two-layer MLP: the linear path keeps what the backbone knew, the MLP adds to it."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, dropout: float, input_dropout: float = 0.0) -> None:
        super().__init__()
        # Dropping backbone features is augmentation for frozen features: no view of a photo is
        # seen twice exactly, which matters when the training photos come in near-identical runs.
        self.input_dropout = nn.Dropout(input_dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.input_dropout(features)
        return self.linear(features) + self.mlp(features)

    @torch.no_grad()
    def start_from(self, basis: torch.Tensor) -> None:
        """Start as the projection onto ``basis`` (orthonormal rows): the pretrained geometry, kept.

        The MLP's last layer starts at zero, so before training the tower *is* the pretrained
        space projected; training only has to learn what differs, which small datasets can afford.
        """
        self.linear.weight.copy_(basis)
        self.linear.bias.zero_()
        self.mlp[-1].weight.zero_()
        self.mlp[-1].bias.zero_()


class ModalGate(nn.Module):
    """Per-product weights for (image, title), summing to 1; a product without an image gets (0, 1)."""

    def __init__(self, text_dim: int, image_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(text_dim + image_dim, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def forward(self, text: torch.Tensor, image: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        logits = self.net(torch.cat([image, text], dim=-1))
        logits = logits.masked_fill(torch.stack([~has_image, torch.zeros_like(has_image)], dim=-1), float("-inf"))
        return logits.softmax(dim=-1)


class NgramEmbedding(nn.Module):
    """A learned vector per hashed n-gram bucket; a text's vector is the weighted sum over its bag.

    It starts at zero, so an untrained model is exactly the pretrained text space, and every bucket
    seen in training moves from the first step (its gradient is the tower's output gradient)."""

    def __init__(self, buckets: int, dim: int, idf: bool = False) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, dim, mode="sum", sparse=True)
        nn.init.zeros_(self.bag.weight)
        # Fitted on the training catalog (``NgramHasher.fit_idf``) and saved with the weights.
        self.register_buffer("idf", torch.ones(buckets) if idf else None)

    def forward(self, batch: NgramBatch) -> torch.Tensor:
        return self.bag(batch.ids, batch.offsets, per_sample_weights=batch.weights)


class TwoTowerModel(nn.Module):
    """Query and product towers, saved as safetensors + config."""

    def __init__(self, config: TowerConfig, image_top: nn.Module | None = None,
                 text_top: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        # The backbones' top blocks/layers, trained with the towers when the inputs are maps or token states.
        self.image_top = image_top or (load_image_top(config.image_encoder) if config.fine_tunes_backbone else None)
        self.text_top = text_top or (load_text_top(config.text_encoder) if config.fine_tunes_text else None)
        make = lambda in_dim, input_dropout=0.0: Projection(  # noqa: E731
            in_dim, config.dim, config.hidden, config.dropout, input_dropout)
        self.query_text = make(config.text_dim)
        self.product_text = make(config.text_dim)
        if config.image_projection == "none":  # the pooled features as they are, for products and queries
            self.product_image = self.query_image = nn.Identity()
        else:
            self.product_image = make(config.image_dim, config.image_dropout)
            self.query_image = (self.product_image if config.shared_image_projection
                                else make(config.image_dim, config.image_dropout))
        self.gate = ModalGate(config.text_dim, config.image_dim) if config.modal_gate else None
        self.ngrams = (NgramEmbedding(config.ngram_buckets, config.dim, config.ngram_idf)
                       if config.ngram_buckets else None)
        self.hasher = config.ngram_hasher()

    def ngram_batch(self, texts: Sequence[str | None]) -> NgramBatch | None:
        """The n-gram input of ``texts`` for this model (None when it has no n-gram embedding)."""
        if self.hasher is None:
            return None
        idf = self.ngrams.idf.numpy() if self.ngrams.idf is not None else None
        return NgramBatch.from_csr(self.hasher.transform(texts, idf))

    def text_vectors(self, tower: nn.Module, text: torch.Tensor, ngrams: NgramBatch | None) -> torch.Tensor:
        """One text tower's (unnormalised) output: its projection, plus the n-gram vectors if the model has them."""
        vectors = tower(text)
        if self.ngrams is None:
            return vectors
        if ngrams is None or len(ngrams) != len(text):
            raise ValueError("this model adds n-gram vectors to its text towers: pass the texts' ngram_batch")
        return vectors + self.ngrams(ngrams)

    @torch.no_grad()
    def start_from_features(self, text: torch.Tensor | Sequence[torch.Tensor], image: torch.Tensor,
                            text_rows=None) -> None:
        """Initialise every projection with the principal directions of the backbone features.

        Query and title towers start identical, so before any training a text query is compared with
        titles exactly as the pretrained text model would compare them. ``text`` may come in parts
        (pooled one by one, so token states are never copied into one array); ``text_rows`` repeats rows
        of it (a text shared by many examples is stored, and run through a trainable top, once).
        """
        parts = [text] if isinstance(text, torch.Tensor) else list(text)
        text = torch.cat([self.pooled(self.text_top, part) for part in parts])
        if text_rows is not None:
            text = text[torch.as_tensor(text_rows)]
        text_basis = principal_basis(text, self.config.dim)
        for tower in (self.query_text, self.product_text):
            tower.start_from(text_basis)
        if self.config.image_projection == "none":
            return
        image = self.pooled(self.image_top, image)  # the projections see pooled features
        image_basis = principal_basis(image, self.config.dim)
        for tower in {id(self.product_image): self.product_image, id(self.query_image): self.query_image}.values():
            tower.start_from(image_basis)

    @staticmethod
    def pooled(top: nn.Module | None, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` through a trainable top in eval mode and in chunks (for initialisation), or as they are."""
        if top is None or not len(inputs):
            return inputs
        was_training = top.training
        top.eval()
        pooled = torch.cat([top(chunk) for chunk in inputs.split(256)])
        top.train(was_training)
        return pooled

    def image_features(self, image: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features: the input itself, or the trainable top run on the rows with an image."""
        return _through_top(self.image_top, image, has_image, self.config.image_dim)

    def text_features(self, text: torch.Tensor, has_text: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence features: the input itself, or the trainable text top run on the rows with a text."""
        if has_text is None:
            has_text = torch.ones(len(text), dtype=torch.bool)
        return _through_top(self.text_top, text, has_text, self.config.text_dim)

    def products(self, text: torch.Tensor, image: torch.Tensor, has_image: torch.Tensor,
                 ngrams: NgramBatch | None = None) -> torch.Tensor:
        """Fused product vectors from title/description features and (mean) image features."""
        image = self.image_features(image, has_image)
        text = self.text_features(text)
        text_vec = F.normalize(self.text_vectors(self.product_text, text, ngrams), dim=-1)
        image_vec = F.normalize(self.product_image(image), dim=-1)
        weights = self.modal_weights(text, image, has_image)
        return F.normalize(weights[:, :1] * image_vec + weights[:, 1:] * text_vec, dim=-1)

    def modal_weights(self, text: torch.Tensor, image: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.gate(text, image, has_image)
        image_weight = has_image.float().unsqueeze(-1) * 0.5
        return torch.cat([image_weight, 1.0 - image_weight], dim=-1)

    def queries(self, text: torch.Tensor, image: torch.Tensor, has_text: torch.Tensor,
                has_image: torch.Tensor, ngrams: NgramBatch | None = None) -> torch.Tensor:
        """Query vectors; a query with both text and photo averages the two directions."""
        image = self.image_features(image, has_image)
        text = self.text_features(text, has_text)
        text_vec = F.normalize(self.text_vectors(self.query_text, text, ngrams), dim=-1) * has_text.float().unsqueeze(-1)
        image_vec = F.normalize(self.query_image(image), dim=-1) * has_image.float().unsqueeze(-1)
        return F.normalize(text_vec + image_vec, dim=-1)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()
                 if not (self.config.shared_image_projection and name.startswith("query_image."))}
        save_file(state, str(folder / ".model.safetensors.tmp"))
        (folder / ".model.safetensors.tmp").replace(folder / "model.safetensors")
        write_atomic(folder / "config.json", json.dumps({"kind": "two-tower", **asdict(self.config)}, indent=2).encode())

    @classmethod
    def load(cls, folder: Path) -> "TwoTowerModel":
        folder = Path(folder)
        try:
            raw = json.loads((folder / "config.json").read_text())
            raw.pop("kind", None)
            model = cls(TowerConfig(**raw))
            state = load_file(str(folder / "model.safetensors"))
        except (OSError, ValueError, TypeError) as exc:
            raise StoreError(f"{folder}: cannot load the trained model ({exc})") from None
        if model.config.shared_image_projection:  # saved once, used under both names
            state.update({f"query_image.{k[len('product_image.'):]}": v for k, v in state.items()
                          if k.startswith("product_image.")})
        model.load_state_dict(state)
        return model.eval()


def _through_top(top: nn.Module | None, inputs: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """``inputs`` as they are without a top; else the top's output on ``rows`` and zeros elsewhere."""
    if top is None:
        return inputs
    pooled = inputs.new_zeros(len(inputs), width)
    if bool(rows.any()):
        pooled[rows] = top(inputs[rows])
    return pooled


def principal_basis(features: torch.Tensor, dim: int) -> torch.Tensor:
    """``(dim, d)``: the top principal directions of ``features`` as orthonormal rows (uncentred, since
    cosine similarity is measured from the origin), completed with random orthonormal directions when
    the data spans fewer than ``dim``, and with zero rows if ``dim`` exceeds the feature width ``d``."""
    d = features.shape[1]
    rows = features[features.norm(dim=1) > 0].float()
    basis = torch.linalg.svd(rows, full_matrices=False)[2][:dim] if len(rows) else torch.zeros(0, d)
    # Singular vectors have no inherent sign and LAPACK's choice varies with the thread count: fix it
    # (largest entry positive, as sklearn's svd_flip) so a run starts from the same towers anywhere.
    if len(basis):
        basis = basis * torch.sign(basis.gather(1, basis.abs().argmax(dim=1, keepdim=True)))
    wanted = min(dim, d)
    if len(basis) < wanted:  # complete with random directions orthogonal to what we have
        extra = torch.randn(d, wanted - len(basis), generator=torch.Generator().manual_seed(0))
        extra -= basis.T @ (basis @ extra)
        basis = torch.cat([basis, torch.linalg.qr(extra)[0].T])
    return torch.cat([basis, torch.zeros(dim - wanted, d)])
