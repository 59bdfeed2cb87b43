"""Building the embedder a store's config asks for, by name."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from vitrine.config import Config
from vitrine.embedding import Embedder, EnsembleEmbedder, TrainedEmbedder, ZeroShotEmbedder
from vitrine.encoders import (CachedImageEncoder, CachedTextEncoder, FeatureCache, ImageEncoder, TextEncoder,
                              load_image_encoder, load_image_top, load_text_encoder, load_text_top,
                              parse_image_encoder, parse_text_encoder, with_top_blocks)
from vitrine.encoders.sentence_transformer import served_text_top
from vitrine.encoders.shared import LastCallMemo, StackedEncoder
from vitrine.errors import StoreError


def build_embedder(config: Config, models_dir: Path, recorded: dict[str, Any] | None = None,
                   cache: FeatureCache | None = None) -> Embedder:
    """The embedder ``config`` names. Backbones load on first use where their widths are known
    (from the trained model's config, or from the manifest), so a text-only search never loads the
    image network. With a ``cache``, image files are encoded once across index builds and evals."""
    kind = config.embedding.kind

    def cached_image(encoder: ImageEncoder) -> ImageEncoder:
        return CachedImageEncoder(encoder, cache) if cache is not None else encoder

    def cached_text(encoder: TextEncoder) -> TextEncoder:
        return CachedTextEncoder(encoder, cache) if cache is not None and config.encoders.cache_texts else encoder

    @functools.cache  # an ensemble's members share a backbone they both name
    def image_encoder(name: str) -> ImageEncoder:
        encoder = load_image_encoder(name, config.encoders)
        # The frozen part below a fine-tuned top: an ensemble's two members may both read its output.
        return cached_image(LastCallMemo(encoder) if parse_image_encoder(name)[2] else encoder)

    @functools.cache
    def text_encoder(name: str) -> TextEncoder:
        encoder = load_text_encoder(name, config.encoders)
        return cached_text(LastCallMemo(encoder) if parse_text_encoder(name)[1] else encoder)

    if kind == "trained":
        weight = config.embedding.zero_shot_weight
        if not 0.0 <= weight < 1.0:
            raise StoreError(f"embedding.zero_shot_weight must be in [0, 1), got {weight}")
        names = config.embedding.models()
        if len(set(names)) < len(names):
            raise StoreError(f"embedding.also names a model twice: {', '.join(names)}")

        def served(name: str, recorded: dict[str, Any] | None) -> Embedder:
            """One trained model as served: its towers, with its own backbones' zero-shot block if asked."""
            trained = _trained(config, Path(models_dir) / name, text_encoder, image_encoder)
            if weight == 0.0:
                return trained
            towers = trained.model.config
            # Each model's zero-shot block comes from the backbones its towers were trained on.
            encoders = replace(config.encoders, image=with_top_blocks(towers.image_encoder, 0),
                               text=with_top_blocks(towers.text_encoder, 0))
            in_torch = replace(encoders, runtime="torch")  # only the top is taken from these loads
            member_images = _sharing_bottom(towers.image_encoder, encoders.image, image_encoder, cached_image,
                                            lambda: load_image_top(towers.image_encoder, in_torch), encoders.runtime,
                                            encoders.threads)
            # A text top serves itself (cut to the batch's longest text, then ONNX Runtime): "torch" leaves it be.
            member_texts = _sharing_bottom(towers.text_encoder, encoders.text, text_encoder, cached_text,
                                           lambda: served_text_top(load_text_top(towers.text_encoder, in_torch),
                                                                   encoders.runtime, encoders.threads),
                                           "torch", encoders.threads)
            zero_shot = _zero_shot(replace(config, encoders=encoders), _member(recorded, "zeroshot"), member_texts,
                                   member_images)
            return EnsembleEmbedder([(trained, 1.0 - weight), (zero_shot, weight)])

        if len(names) == 1:
            return served(names[0], recorded)
        return EnsembleEmbedder([(served(name, None), 1.0 / len(names)) for name in names])
    if kind == "zeroshot":
        recorded = recorded if (recorded or {}).get("kind") == "zeroshot" else None
        return _zero_shot(config, recorded, text_encoder, image_encoder)
    raise StoreError(f"unknown embedding kind {kind!r} in this store's config (zeroshot or trained)")


def _member(recorded: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """What the manifest recorded for an ensemble's member of ``kind``, if it recorded an ensemble."""
    members = (recorded or {}).get("members", []) if (recorded or {}).get("kind") == "ensemble" else []
    return next((member for member in members if member.get("kind") == kind), None)


def _sharing_bottom(trained_name: str, zero_shot_name: str, load: Callable[[str], Any], wrap: Callable[[Any], Any],
                    pretrained_top: Callable[[], torch.nn.Module], runtime: str, threads: int) -> Callable[[str], Any]:
    """The zero-shot member's encoders (of one modality) by name. When the towers fine-tuned the top of the
    very backbone the zero-shot vectors come from, those are computed from the towers' input (the frozen
    bottom's output) through the pretrained top, so a query runs the frozen part once for both members."""
    if trained_name == zero_shot_name or with_top_blocks(trained_name, 0) != zero_shot_name:
        return load

    @functools.cache
    def shared(name: str) -> Any:
        if name != zero_shot_name:
            return load(name)
        return wrap(StackedEncoder(load(trained_name), pretrained_top(), name, runtime=runtime, threads=threads))
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
