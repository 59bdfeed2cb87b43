"""Pretrained backbones behind two small interfaces, chosen by name."""

from vitrine.encoders.base import ImageEncoder, TextEncoder, l2_normalize
from vitrine.encoders.cache import CachedImageEncoder, CachedTextEncoder, FeatureCache
from vitrine.encoders.registry import (IMAGE_ENCODERS, TEXT_ENCODERS, load_image_encoder, load_image_top,
                                       load_text_encoder,
                                       load_text_top, parse_image_encoder, parse_text_encoder, with_top_blocks)

__all__ = ["CachedImageEncoder", "CachedTextEncoder", "FeatureCache", "IMAGE_ENCODERS", "ImageEncoder", "TEXT_ENCODERS", "TextEncoder", "l2_normalize",
           "load_image_encoder", "load_image_top", "load_text_encoder", "load_text_top", "parse_image_encoder", "parse_text_encoder", "with_top_blocks"]
