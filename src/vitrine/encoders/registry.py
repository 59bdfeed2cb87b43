"""Backbones by name. A new backbone is one new file plus one line here."""

from __future__ import annotations

from typing import Callable

from vitrine.config import EncoderConfig
from vitrine.encoders.base import ImageEncoder, TextEncoder
from vitrine.errors import VitrineError


def _minilm(config: EncoderConfig) -> TextEncoder:
    from vitrine.encoders.sentence_transformer import SentenceTransformerEncoder, minilm_path

    return SentenceTransformerEncoder(minilm_path(), name="minilm")


def _local_sentence_transformer(path: str) -> TextEncoder:
    from vitrine.encoders.sentence_transformer import SentenceTransformerEncoder

    return SentenceTransformerEncoder(path, name=f"sentence-transformers:{path}")


def _efficientnet_lite0(config: EncoderConfig, size: int | None) -> ImageEncoder:
    from vitrine.encoders.efficientnet import EfficientNetLiteEncoder

    return EfficientNetLiteEncoder(num_workers=config.num_workers, image_size=size or 224)


TEXT_ENCODERS: dict[str, Callable[[EncoderConfig], TextEncoder]] = {"minilm": _minilm}
IMAGE_ENCODERS: dict[str, Callable[[EncoderConfig, int | None], ImageEncoder]] = {
    "efficientnet-lite0": _efficientnet_lite0}


def load_text_encoder(name: str, config: EncoderConfig | None = None) -> TextEncoder:
    """A registered text backbone, or ``sentence-transformers:/path`` for a local model folder."""
    config = config or EncoderConfig()
    _set_threads(config)
    if name.startswith("sentence-transformers:"):
        return _local_sentence_transformer(name.partition(":")[2])
    if name not in TEXT_ENCODERS:
        raise VitrineError(f"unknown text encoder {name!r} (registered: {', '.join(TEXT_ENCODERS)};"
                           " or sentence-transformers:/local/path)")
    return TEXT_ENCODERS[name](config)


def load_image_encoder(name: str, config: EncoderConfig | None = None) -> ImageEncoder:
    """A registered image backbone; ``name@SIZE`` (``efficientnet-lite0@320``) sets the input resolution.

    The resolution is part of the name because it changes the features: a model trained on one
    resolution must be served with the same one, and caches must not mix them.
    """
    config = config or EncoderConfig()
    _set_threads(config)
    base, _, size = name.partition("@")
    if base not in IMAGE_ENCODERS or (size and not size.isdigit()):
        raise VitrineError(f"unknown image encoder {name!r} (registered: {', '.join(IMAGE_ENCODERS)};"
                           " add @SIZE for another input resolution)")
    encoder = IMAGE_ENCODERS[base](config, int(size) if size else None)
    encoder.name = name
    return encoder


def _set_threads(config: EncoderConfig) -> None:
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
