"""Serving the trained towers: backbone features in, one learned space out. The head used in
training (temperature, memory bank, miner) is not needed here."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrine.catalog.product import Product
from vitrine.config import write_atomic
from vitrine.embedding.base import Embedder, Query, product_image_features
from vitrine.embedding.towers import TwoTowerModel
from vitrine.encoders.base import ImageEncoder, TextEncoder


TRAINED_PRODUCTS_FILE = "trained_products.txt"
"""Beside a trained model: the ids of the catalog's products when it was trained (one a line), so that products
added later, or held out, can be told apart from those the towers learned."""


def save_trained_products(folder: Path, product_ids: Sequence[str]) -> None:
    write_atomic(Path(folder) / TRAINED_PRODUCTS_FILE, "".join(f"{pid}\n" for pid in sorted(product_ids)).encode())


def load_trained_products(folder: Path) -> set[str] | None:
    """The products the model in ``folder`` was trained with, or None for a model saved without the list."""
    path = Path(folder) / TRAINED_PRODUCTS_FILE
    return set(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else None


class TrainedEmbedder(Embedder):
    kind = "trained"

    def __init__(self, model: TwoTowerModel, text_encoder: Callable[[], TextEncoder],
                 image_encoder: Callable[[], ImageEncoder], *, name: str = "default", batch_size: int = 32,
                 dim: int | None = None, weights_digest: str = "", runtime: str = "torch", threads: int = 0) -> None:
        if runtime == "onnx" and model.image_top is not None:
            # The fine-tuned backbone blocks run on every photo query: in ONNX Runtime, as the frozen ones below.
            from vitrine.encoders.onnx_runtime import ServedModule

            model.image_top = ServedModule(model.image_top, "maps", "image-top", threads)
        if model.text_top is not None:  # the fine-tuned text layers, likewise
            from vitrine.encoders.sentence_transformer import served_text_top

            model.text_top = served_text_top(model.text_top, runtime, threads)
        self.model = model.eval()
        self._load_text, self._load_image = text_encoder, image_encoder
        self.name = name
        self.batch_size = batch_size
        self.dim = dim or model.config.dim  # a Matryoshka prefix may be served instead of the full width
        self.weights_digest = weights_digest

    @classmethod
    def load(cls, folder: Path, text_encoder: Callable[[str], TextEncoder],
             image_encoder: Callable[[str], ImageEncoder], **kwargs: Any) -> "TrainedEmbedder":
        """The model saved in ``folder``; its backbones are loaded, by the names it was trained with, on first use."""
        folder = Path(folder)
        model = TwoTowerModel.load(folder)
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]
        return cls(model, functools.partial(text_encoder, model.config.text_encoder),
                   functools.partial(image_encoder, model.config.image_encoder),
                   name=folder.name, weights_digest=digest, **kwargs)

    @cached_property
    def text_encoder(self) -> TextEncoder:
        return self._load_text()

    @cached_property
    def image_encoder(self) -> ImageEncoder:
        return self._load_image()

    def encode_products(self, products: Sequence[Product], *, progress: bool = False) -> np.ndarray:
        text, image, has_image = self._product_inputs(products, progress)
        with torch.inference_mode():
            vectors = self.model.products(text, image, has_image, self.model.ngram_batch([p.text for p in products]))
        return self._served(vectors)

    def encode_product_parts(self, products: Sequence[Product], *, progress: bool = False) -> dict[str, np.ndarray]:
        text_t, image_t, has_t = self._product_inputs(products, progress)
        ngrams = self.model.ngram_batch([p.text for p in products])
        with torch.inference_mode():
            fused = self.model.products(text_t, image_t, has_t, ngrams)
            text_vec = self.model.text_vectors(self.model.product_text, self.model.text_features(text_t), ngrams)
            image_vec = self.model.product_image(self.model.image_features(image_t, has_t)) * has_t.float().unsqueeze(-1)
        return {"fused": self._served(fused), "text": self._served(text_vec), "image": self._served(image_vec)}

    def encode_queries(self, queries: Sequence[Query], *, progress: bool = False) -> np.ndarray:
        config = self.model.config
        text = np.zeros((len(queries), config.text_input_width), dtype=np.float32)
        image = np.zeros((len(queries), config.image_input_width), dtype=np.float32)
        has_text = np.array([bool(q.text) for q in queries])
        has_image = np.array([q.image is not None for q in queries])
        if has_text.any():
            text[has_text] = self.text_encoder.encode([q.text for q in queries if q.text], batch_size=self.batch_size)
        if has_image.any():
            image[has_image] = self._image_features([q.image for q in queries if q.image is not None])
        with torch.inference_mode():
            vectors = self.model.queries(torch.from_numpy(text), torch.from_numpy(image),
                                         torch.from_numpy(has_text), torch.from_numpy(has_image),
                                         self.model.ngram_batch([q.text for q in queries]))
        return self._served(vectors)

    def _product_inputs(self, products: Sequence[Product], progress: bool) -> tuple[torch.Tensor, ...]:
        """Backbone features of the products' texts and (mean) images, and which products have an image."""
        text = self.text_encoder.encode([p.text for p in products], batch_size=self.batch_size, progress=progress)
        image, has_image = product_image_features(products, self._image_features, self.model.config.image_input_width,
                                                  normalize=not self.model.config.fine_tunes_backbone)
        return torch.from_numpy(text), torch.from_numpy(image), torch.from_numpy(has_image)

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {"kind": self.kind, "model": self.name, "weights": self.weights_digest, "dim": self.dim,
                "trained_dim": config.dim,
                "text_encoder": config.text_encoder, "image_encoder": config.image_encoder,
                "modal_gate": config.modal_gate, "text_dim": config.text_dim, "image_dim": config.image_dim}

    def _image_features(self, images: Sequence[Any]) -> np.ndarray:
        return self.image_encoder.encode(list(images), batch_size=self.batch_size)

    def _served(self, vectors: torch.Tensor) -> np.ndarray:
        vectors = torch.nn.functional.normalize(vectors[:, : self.dim], dim=-1)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
