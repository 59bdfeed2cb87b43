"""Building the embedder a store asks for, by name, from its manifest or its config."""

from __future__ import annotations

import functools
from typing import Any

from vitrine.config import Config
from vitrine.embedding import Embedder, ZeroShotEmbedder
from vitrine.encoders import load_image_encoder, load_text_encoder
from vitrine.errors import StoreError


def build_embedder(config: Config, recorded: dict[str, Any] | None = None) -> Embedder:
    """The embedder recorded in a store's manifest, or a new one from ``config``.

    A recorded embedder knows its dimensions, so its backbones load only when first needed: a
    text-only search never loads the image network.
    """
    kind = (recorded or {}).get("kind", config.embedding.kind)
    if kind != "zeroshot":
        raise StoreError(f"unknown embedding kind {kind!r} in this store (this vitrine knows: zeroshot)")
    text_name = (recorded or {}).get("text_encoder", config.encoders.text)
    image_name = (recorded or {}).get("image_encoder", config.encoders.image)
    load_text = functools.partial(load_text_encoder, text_name, config.encoders)
    load_image = functools.partial(load_image_encoder, image_name, config.encoders)
    if recorded:
        text_dim, image_dim = int(recorded["text_dim"]), int(recorded["image_dim"])
        weight = float(recorded["image_weight"])
    else:  # a new store: load the backbones now to learn their widths, and keep them
        text, image = load_text(), load_image()
        load_text, load_image = (lambda: text), (lambda: image)
        text_dim, image_dim, weight = text.dim, image.dim, config.embedding.image_weight
    return _ZeroShot(text_name, image_name, load_text, load_image, text_dim=text_dim, image_dim=image_dim,
                     image_weight=weight, batch_size=config.encoders.batch_size)


class _ZeroShot(ZeroShotEmbedder):
    """A ``ZeroShotEmbedder`` that remembers its backbones' names for the manifest."""

    def __init__(self, text_name: str, image_name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.text_name, self.image_name = text_name, image_name

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "text_encoder": self.text_name, "image_encoder": self.image_name}
