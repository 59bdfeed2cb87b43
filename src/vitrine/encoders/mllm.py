"""MLLM2vec: a Hugging Face vision-language model (the Qwen2-VL family) as a text and an image encoder.

Every input becomes one prompt that ends in an embedding token; the model's final hidden state at
that token, L2-normalised, is the embedding (last-token pooling, as in E5-V, GME and Pailitao-VL's
stage 1). Texts and photos go through the same model with prompts of the same shape, so they land in
one space and either can serve as the stage-1 backbone of ``vitrine train`` (its features are cached
like any other encoder's).

Prompts are assembled here as token ids: text pieces through the tokenizer, the vision placeholders
and the embedding token by id. That needs only the tokenizer and the image processor, not the model's
full processor, whose video half wants torchvision. Batches are left-padded, so the embedding token is
the last position of every row.

Real use, with a GPU and weights on local disk (nothing is downloaded)::

    vitrine train STORE --data grocery:... --set encoders.text=mllm:/models/gme-Qwen2-VL-2B-Instruct \\
                                           --set encoders.image=mllm:/models/gme-Qwen2-VL-2B-Instruct

The default prompt ends in ``<|endoftext|>``, the token GME's Qwen2-VL embedders pool.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrine.catalog.images import ImageInput, open_image
from vitrine.encoders.base import ImageEncoder, TextEncoder, l2_normalize
from vitrine.errors import VitrineError
from vitrine.progress import progress_bar


@dataclass(frozen=True)
class MLLMPrompts:
    """The prompt around each input; ``{text}`` / ``{image}`` mark where the input goes."""

    text: str = "{text}\nSummarize the above product in one word:"
    image: str = "{image}\nSummarize the above product in one word:"
    embed_token: str = "<|endoftext|>"
    """Appended to every prompt; its final hidden state is the embedding."""
    vision_start: str = "<|vision_start|>"
    image_pad: str = "<|image_pad|>"
    """Repeated once per merged image patch; the model swaps in the vision tower's features."""
    vision_end: str = "<|vision_end|>"


class MLLMEmbedder:
    """One vision-language model, embedding texts and images by last-token pooling."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any = None, *,
                 prompts: MLLMPrompts = MLLMPrompts(), max_text_tokens: int = 256,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer, self.image_processor, self.prompts = tokenizer, image_processor, prompts
        self.max_text_tokens = max_text_tokens
        self.embed_id = self._token_id(prompts.embed_token)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.embed_id
        # The decoder without its language-model head: its last_hidden_state is what is pooled.
        self.decoder = getattr(model, "model", model)
        self._takes_mm_types = "mm_token_type_ids" in inspect.signature(self.decoder.forward).parameters

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | None = None, max_pixels: int = 448 * 448,
                        **kwargs: Any) -> "MLLMEmbedder":
        """Model, tokenizer and image processor from a local folder (never the hub).

        ``max_pixels`` bounds the image tokens per photo (448² gives 256 tokens on Qwen2-VL).
        """
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise VitrineError(f"MLLM folder not found or has no config.json: {folder}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True, max_pixels=max_pixels)
        model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=dtype)
        return cls(model, tokenizer, image_processor, device=device, **kwargs)

    @property
    def dim(self) -> int:
        config = self.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return int(text.hidden_size)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise VitrineError(f"the tokenizer has no token {token!r} (needed by the MLLM2vec prompt)")
        return int(token_id)

    def _pieces(self, template: str, slot: str) -> tuple[list[int], list[int]]:
        before, _, after = template.partition(slot)
        encode = functools.partial(self.tokenizer.encode, add_special_tokens=False)
        return (encode(before) if before else []), (encode(after) if after else [])

    def text_ids(self, text: str) -> list[int]:
        """The prompt of one text; long texts are cut so the embedding token always ends it."""
        before, after = self._pieces(self.prompts.text, "{text}")
        body = self.tokenizer.encode(text, add_special_tokens=False)[: self.max_text_tokens]
        return before + body + after + [self.embed_id]

    def image_ids(self, image_tokens: int) -> list[int]:
        """The prompt of one image that the vision tower turns into ``image_tokens`` merged patches."""
        before, after = self._pieces(self.prompts.image, "{image}")
        vision = ([self._token_id(self.prompts.vision_start)] + [self._token_id(self.prompts.image_pad)] * image_tokens
                  + [self._token_id(self.prompts.vision_end)])
        return before + vision + after + [self.embed_id]

    def text_batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self._left_padded([self.text_ids(text) for text in texts])

    def image_batch(self, images: Sequence[ImageInput]) -> dict[str, torch.Tensor]:
        if self.image_processor is None:
            raise VitrineError("this MLLM encoder has no image processor, so it cannot embed images")
        pixels = self.image_processor(images=[open_image(image) for image in images], return_tensors="pt")
        merge = int(getattr(self.image_processor, "merge_size", 2))
        counts = (pixels["image_grid_thw"].prod(dim=-1) // merge**2).tolist()
        batch = self._left_padded([self.image_ids(int(count)) for count in counts])
        batch.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
        if self._takes_mm_types:  # newer transformers want to be told which tokens are image patches
            batch["mm_token_type_ids"] = (batch["input_ids"] == self._token_id(self.prompts.image_pad)).int()
        return batch

    def _left_padded(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, width - len(row):] = torch.tensor(row)
            mask[index, width - len(row):] = 1
        return {"input_ids": ids, "attention_mask": mask}

    @torch.inference_mode()
    def embed(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """Unit vectors: the last position's final hidden state of each row."""
        inputs = {key: value.to(self.device) for key, value in batch.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        hidden = self.decoder(**inputs, use_cache=False).last_hidden_state[:, -1]
        return l2_normalize(hidden.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str], batch_size: int = 8, progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.text_batch, batch_size, progress, "encode texts (MLLM)")

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 8, progress: bool = False) -> np.ndarray:
        return self._encode(images, self.image_batch, batch_size, progress, "encode images (MLLM)")

    def _encode(self, items: Sequence, make_batch, batch_size: int, progress: bool, desc: str) -> np.ndarray:
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        starts = range(0, len(items), batch_size)
        parts = [self.embed(make_batch(items[start:start + batch_size]))
                 for start in progress_bar(starts, enabled=progress, desc=desc, unit="batch")]
        return np.concatenate(parts).astype(np.float32, copy=False)


class MLLMTextEncoder(TextEncoder):
    def __init__(self, embedder: MLLMEmbedder, name: str = "mllm") -> None:
        self.embedder, self.name, self.dim = embedder, name, embedder.dim

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        # Prompts are far longer than a MiniLM input: batches of 8 keep activations modest.
        return self.embedder.encode_texts(list(texts), min(batch_size, 8), progress)


class MLLMImageEncoder(ImageEncoder):
    def __init__(self, embedder: MLLMEmbedder, name: str = "mllm") -> None:
        self.embedder, self.name, self.dim = embedder, name, embedder.dim

    def encode(self, images: Sequence[ImageInput], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        return self.embedder.encode_images(list(images), min(batch_size, 8), progress)


@functools.lru_cache(maxsize=1)
def load_mllm(path: str) -> MLLMEmbedder:
    """The embedder of the model folder ``path``, loaded once: the text and the image encoder named
    ``mllm:PATH`` share one copy of a multi-gigabyte model."""
    return MLLMEmbedder.from_pretrained(path)
