"""Building the embedder a store's config asks for, by name."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

from vitrine.config import Config
from vitrine.embedding import Embedder, EnsembleEmbedder, TrainedEmbedder, ZeroShotEmbedder
from vitrine.encoders import (CachedImageEncoder, CachedTextEncoder, FeatureCache, ImageEncoder, TextEncoder,
                              load_image_encoder, load_image_top, load_text_encoder, parse_image_encoder,
                              with_top_blocks)
from vitrine.encoders.shared import LastBatchMemo, StackedImageEncoder
from vitrine.errors import StoreError


def build_embedder(config: Config, models_dir: Path, recorded: dict[str, Any] | None = None,
                   cache: FeatureCache | None = None) -> Embedder:
    """The embedder ``config`` names. Backbones load on first use where their widths are known
    (from the trained model's config, or from the manifest), so a text-only search never loads the
    image network. With a ``cache``, image files are encoded once across index builds and evals."""
    kind = config.embedding.kind

    @functools.cache  # an ensemble's members share a backbone they both name
    def image_encoder(name: str) -> ImageEncoder:
        encoder = load_image_encoder(name, config.encoders)
        if parse_image_encoder(name)[2]:  # maps below a fine-tuned top: an ensemble's members may both read them
            encoder = LastBatchMemo(encoder)
        return CachedImageEncoder(encoder, cache) if cache is not None else encoder

    @functools.cache
    def text_encoder(name: str) -> TextEncoder:
        encoder = load_text_encoder(name, config.encoders)
        return CachedTextEncoder(encoder, cache) if cache is not None and config.encoders.cache_texts else encoder

    if kind == "trained":
        trained = _trained(config, Path(models_dir) / config.embedding.model, text_encoder, image_encoder)
        weight = config.embedding.zero_shot_weight
        if not 0.0 <= weight < 1.0:
            raise StoreError(f"embedding.zero_shot_weight must be in [0, 1), got {weight}")
        if weight == 0.0:
            return trained
        recorded = _member(recorded, "zeroshot")
        member_images = _sharing_bottom(config, trained.model.config.image_encoder, image_encoder, cache)
        return EnsembleEmbedder([(trained, 1.0 - weight),
                                 (_zero_shot(config, recorded, text_encoder, member_images), weight)])
    if kind == "zeroshot":
        recorded = recorded if (recorded or {}).get("kind") == "zeroshot" else None
        return _zero_shot(config, recorded, text_encoder, image_encoder)
    raise StoreError(f"unknown embedding kind {kind!r} in this store's config (zeroshot or trained)")


def _member(recorded: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """What the manifest recorded for an ensemble's member of ``kind``, if it recorded an ensemble."""
    members = (recorded or {}).get("members", []) if (recorded or {}).get("kind") == "ensemble" else []
    return next((member for member in members if member.get("kind") == kind), None)


def _sharing_bottom(config: Config, trained_image: str, image_encoder: Callable[[str], ImageEncoder],
                    cache: FeatureCache | None) -> Callable[[str], ImageEncoder]:
    """The zero-shot member's image encoders. When the towers fine-tuned the top blocks of the very backbone
    the zero-shot vectors come from, its features are computed from the towers' input maps through the
    pretrained top, so a photo runs the frozen blocks once for both members."""
    zero_shot_image = config.encoders.image
    if trained_image == zero_shot_image or with_top_blocks(trained_image, 0) != zero_shot_image:
        return image_encoder

    @functools.cache
    def shared(name: str) -> ImageEncoder:
        if name != zero_shot_image:
            return image_encoder(name)
        frozen_top = load_image_top(trained_image, replace(config.encoders, runtime="torch"))
        encoder = StackedImageEncoder(image_encoder(trained_image), frozen_top, name,
                                      runtime=config.encoders.runtime, threads=config.encoders.threads)
        return CachedImageEncoder(encoder, cache) if cache is not None else encoder
    return shared


def _trained(config: Config, folder: Path, text_encoder: Callable[[str], TextEncoder],
             image_encoder: Callable[[str], ImageEncoder]) -> Embedder:
    if not (folder / "model.safetensors").is_file():
        raise StoreError(f"{folder}: no trained model here; run 'vitrine train' first or set embedding.kind=zeroshot")
    return TrainedEmbedder.load(folder, text_encoder, image_encoder, batch_size=config.encoders.batch_size,
                                runtime=config.encoders.runtime, threads=config.encoders.threads)


def _zero_shot(config: Config, recorded: dict[str, Any] | None, text_encoder: Callable[[str], TextEncoder],
               image_encoder: Callable[[str], ImageEncoder]) -> Embedder:
    text_name, image_name = config.encoders.text, config.encoders.image
    load_text = functools.partial(text_encoder, text_name)
    load_image = functools.partial(image_encoder, image_name)
    same_backbones = recorded and (recorded.get("text_encoder"), recorded.get("image_encoder")) == (text_name, image_name)
    if same_backbones:
        text_dim, image_dim = int(recorded["text_dim"]), int(recorded["image_dim"])
    else:  # a new store: load the backbones now to learn their widths, and keep them
        text, image = load_text(), load_image()
        load_text, load_image = (lambda: text), (lambda: image)
        text_dim, image_dim = text.dim, image.dim
    return _ZeroShot(text_name, image_name, load_text, load_image, text_dim=text_dim, image_dim=image_dim,
                     image_weight=config.embedding.image_weight, batch_size=config.encoders.batch_size)


class _ZeroShot(ZeroShotEmbedder):
    """A ``ZeroShotEmbedder`` that remembers its backbones' names for the manifest."""

    def __init__(self, text_name: str, image_name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.text_name, self.image_name = text_name, image_name

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "text_encoder": self.text_name, "image_encoder": self.image_name}
