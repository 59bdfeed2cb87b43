"""The trained space that judges data: alignment of each sample's query with its product.

Governed data is judged by what the current trained towers make of it. Backbone features come from
the store's feature cache, so judging a set the trainer has already seen costs no backbone pass, and
new images (salient crops) get their own cache entries (their own file paths).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from vitrine.catalog import Store
from vitrine.catalog.product import Pair, Product
from vitrine.config import Config
from vitrine.embedding.base import product_image_features
from vitrine.embedding.towers import TwoTowerModel
from vitrine.encoders import load_image_encoder, load_text_encoder
from vitrine.encoders.cache import FeatureCache
from vitrine.errors import StoreError
from vitrine.governance.vision import load_frozen_towers


class Judge:
    def __init__(self, store: Store, config: Config, *, progress: bool = False) -> None:
        name = config.governance.model or config.embedding.model
        self.folder = store.models_dir / name
        if not (self.folder / "model.safetensors").is_file():
            raise StoreError(f"{self.folder}: governance judges data with trained towers; "
                             f"run 'vitrine train {store.root}' first (or set governance.model)")
        self.store, self.config, self.progress = store, config, progress
        self.cache = FeatureCache(store.root / "cache" / "features.sqlite")

    @cached_property
    def model(self) -> TwoTowerModel:
        return load_frozen_towers(self.folder)

    @cached_property
    def text_encoder(self):
        return load_text_encoder(self.model.config.text_encoder, self.config.encoders)

    @cached_property
    def image_encoder(self):
        return load_image_encoder(self.model.config.image_encoder, self.config.encoders)

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        return self.cache.texts(self.text_encoder, list(texts), progress=self.progress)

    def image_features(self, paths: Sequence[str]) -> np.ndarray:
        return self.cache.images(self.image_encoder, [str(p) for p in paths], progress=self.progress)

    def products(self, products: Sequence[Product]) -> np.ndarray:
        """Unit product vectors (image paths must be readable, e.g. resolved against the store)."""
        resolved = [replace(p, images=tuple(str(self._resolve(i)) for i in p.images)) for p in products]
        text = self.text_features([p.text for p in resolved])
        image, has_image = product_image_features(resolved, self.image_features, self.model.config.image_dim)
        with torch.inference_mode():
            return self.model.products(torch.from_numpy(text), torch.from_numpy(image), torch.from_numpy(has_image),
                                       self.model.ngram_batch([p.text for p in resolved])).numpy()

    def queries(self, pairs: Sequence[Pair]) -> np.ndarray:
        """Unit query vectors of the pairs' texts and photos."""
        config = self.model.config
        has_text = np.array([bool(p.query_text) for p in pairs])
        has_image = np.array([bool(p.query_image) for p in pairs])
        text = np.zeros((len(pairs), config.text_input_width), dtype=np.float32)
        image = np.zeros((len(pairs), config.image_input_width), dtype=np.float32)
        if has_text.any():
            text[has_text] = self.text_features([p.query_text for p in pairs if p.query_text])
        if has_image.any():
            image[has_image] = self.image_features([p.query_image for p in pairs if p.query_image])
        with torch.inference_mode():
            return self.model.queries(torch.from_numpy(text), torch.from_numpy(image), torch.from_numpy(has_text),
                                      torch.from_numpy(has_image), self.model.ngram_batch([p.query_text for p in pairs])).numpy()

    def alignment(self, pairs: Sequence[Pair], products: dict[str, Product]) -> np.ndarray:
        """Cosine of each pair's query with its product in the trained space."""
        ids = list(dict.fromkeys(p.product_id for p in pairs))
        vectors = dict(zip(ids, self.products([products[i] for i in ids])))
        queries = self.queries(pairs)
        return np.array([float(q @ vectors[p.product_id]) for q, p in zip(queries, pairs)], dtype=np.float32)

    def _resolve(self, image: str) -> Path:
        path = Path(image)
        return path if path.is_absolute() else self.store.resolve(image)
