"""Backbones by name. A new backbone is one new file plus one line here."""

from __future__ import annotations

from typing import Callable

from vitrine.config import EncoderConfig
from vitrine.encoders.base import ImageEncoder, TextEncoder
from vitrine.errors import VitrineError


def _minilm(config: EncoderConfig) -> TextEncoder:
    from vitrine.encoders.sentence_transformer import SentenceTransformerEncoder, minilm_path

    return SentenceTransformerEncoder(minilm_path(), name="minilm", runtime=config.runtime, threads=config.threads)


def _local_sentence_transformer(path: str, config: EncoderConfig) -> TextEncoder:
    from vitrine.encoders.sentence_transformer import SentenceTransformerEncoder

    return SentenceTransformerEncoder(path, name=f"sentence-transformers:{path}", runtime=config.runtime,
                                      threads=config.threads)


def _mllm(path: str, kind: str) -> TextEncoder | ImageEncoder:
    from vitrine.encoders.mllm import MLLMImageEncoder, MLLMTextEncoder, load_mllm

    return (MLLMTextEncoder if kind == "text" else MLLMImageEncoder)(load_mllm(path), name=f"mllm:{path}")


def _efficientnet_lite0(config: EncoderConfig, size: int | None, top_blocks: int = 0) -> ImageEncoder:
    from vitrine.encoders.efficientnet import EfficientNetLiteEncoder

    return EfficientNetLiteEncoder(num_workers=config.num_workers, image_size=size or 224, top_blocks=top_blocks,
                                   runtime=config.runtime, threads=config.threads)


TEXT_ENCODERS: dict[str, Callable[[EncoderConfig], TextEncoder]] = {"minilm": _minilm}
IMAGE_ENCODERS: dict[str, Callable[..., ImageEncoder]] = {"efficientnet-lite0": _efficientnet_lite0}
SPLITTABLE = {"efficientnet-lite0"}
"""Image backbones that can stop below their top blocks (``name/topN``) for end-to-end fine-tuning."""


def load_text_encoder(name: str, config: EncoderConfig | None = None) -> TextEncoder:
    """A registered text backbone, ``sentence-transformers:/path`` for a local model folder, or
    ``mllm:/path`` for a local vision-language model (MLLM2vec)."""
    config = config or EncoderConfig()
    _set_threads(config)
    if name.startswith("sentence-transformers:"):
        return _local_sentence_transformer(name.partition(":")[2], config)
    if name.startswith("mllm:"):
        return _mllm(name.partition(":")[2], "text")
    if name not in TEXT_ENCODERS:
        raise VitrineError(f"unknown text encoder {name!r} (registered: {', '.join(TEXT_ENCODERS)};"
                           " or sentence-transformers:/local/path, mllm:/local/path)")
    return TEXT_ENCODERS[name](config)


def load_image_encoder(name: str, config: EncoderConfig | None = None) -> ImageEncoder:
    """A registered image backbone; ``name@SIZE`` (``efficientnet-lite0@320``) sets the input resolution,
    and ``name@SIZE/topN`` stops below the last ``N`` blocks and returns their input feature maps,
    for a model that fine-tunes those blocks (its ``top()`` is the trainable rest).

    The resolution is part of the name because it changes the features: a model trained on one
    resolution must be served with the same one, and caches must not mix them.
    ``mllm:/path`` embeds photos with a local vision-language model (MLLM2vec).
    """
    config = config or EncoderConfig()
    _set_threads(config)
    if name.startswith("mllm:"):
        return _mllm(name.partition(":")[2], "image")
    base, size, top = parse_image_encoder(name)
    encoder = IMAGE_ENCODERS[base](config, size, top) if top else IMAGE_ENCODERS[base](config, size)
    encoder.name = name
    return encoder


def load_image_top(name: str, config: EncoderConfig | None = None):
    """The trainable top (a ``torch.nn.Module``: flattened maps in, pooled features out) that
    completes the split encoder ``name`` (``.../topN``), starting from the pretrained weights."""
    encoder = load_image_encoder(name, config)
    if not hasattr(encoder, "top") or not parse_image_encoder(name)[2]:
        raise VitrineError(f"image encoder {name!r} has no trainable top (name it NAME@SIZE/topN)")
    return encoder.top()


def parse_image_encoder(name: str) -> tuple[str, int | None, int]:
    """``efficientnet-lite0@288/top2`` -> ``("efficientnet-lite0", 288, 2)``; ``mllm:/path`` -> ``(name, None, 0)``."""
    if name.startswith("mllm:"):
        return name, None, 0  # a path, not a registered name; its blocks are not split for fine-tuning
    head, _, top = name.partition("/top")
    base, _, size = head.partition("@")
    if base not in IMAGE_ENCODERS or (size and not size.isdigit()) or ("/top" in name and not top.isdigit()):
        raise VitrineError(f"unknown image encoder {name!r} (registered: {', '.join(IMAGE_ENCODERS)};"
                           " add @SIZE for another input resolution, /topN to fine-tune the top N blocks)")
    if top and base not in SPLITTABLE:
        raise VitrineError(f"image encoder {base!r} cannot fine-tune its top blocks (only {', '.join(SPLITTABLE)})")
    return base, int(size) if size else None, int(top or 0)


def with_top_blocks(name: str, blocks: int) -> str:
    """The encoder name that leaves the top ``blocks`` of ``name`` to training (0: the frozen backbone)."""
    head = name.partition("/top")[0]
    return f"{head}/top{blocks}" if blocks else head


def _set_threads(config: EncoderConfig) -> None:
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
