"""A generative listwise reranker over a Hugging Face (vision-)language model, as Pailitao-VL serves it.

Each chunk of M candidates becomes one prompt that lists them under single-token labels (A, B, C, ...)
plus a NULL label (N: "none of these is the product"), and ends where the model would write its
answer. The next-token logits at that generation position *are* the scores: the label logits are the
chunk's local scores, the NULL logit is the chunk's zero point, and r = σ(s_i − s_null) plays the
absolute score, so the hybrid merge of ``vitrine.rerank.merge`` orders the chunks. Chunks go through
the model as one left-padded batch: one forward pass per query, no decoding loop.

Real use (a GPU and local weights; nothing is downloaded here)::

    reranker = GenerativeListwiseReranker.from_pretrained("/models/Qwen2-VL-2B-Instruct", device="cuda")
    ranked = reranker.rank(RerankQuery(text="oat milk", image="photo.jpg"),
                           [Candidate(key, score, product) for ...])

With a vision-language model, pass its processor (``from_pretrained`` loads it when the folder has one)
and the query photo goes into the prompt as an image. An off-the-shelf instruct model ranks zero-shot
from the prompt; fine-tuning it on vitrine's lists with the pairwise and NULL losses of
``vitrine.rerank.losses`` on these same logits is the paper's recipe and is not done here. The tests
run this code on a tiny randomly initialised model built in the test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrine.errors import VitrineError
from vitrine.rerank.merge import chunk_slices, hybrid_merge
from vitrine.rerank.reranker import BaseReranker, Candidate, Ranked, RerankQuery

LABELS = tuple("ABCDEFGHIJKLMOPQRSTU")  # no N: it is the NULL label
NULL_LABEL = "N"
INSTRUCTION = ("Which product is exactly the one the shopper is looking for? Answer with its label, "
               f"or {NULL_LABEL} if none of them is.")


class GenerativeListwiseReranker(BaseReranker):
    def __init__(self, model: Any, tokenizer: Any, *, processor: Any = None, chunk_size: int = 10,
                 labels: Sequence[str] = LABELS, null_label: str = NULL_LABEL, max_chars: int = 300,
                 device: str | torch.device = "cpu") -> None:
        if chunk_size > len(labels):
            raise VitrineError(f"a chunk of {chunk_size} needs {chunk_size} labels, only {len(labels)} given")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.chunk_size = chunk_size
        self.labels = tuple(labels[:chunk_size])
        self.null_label = null_label
        self.max_chars = max_chars
        self.device = torch.device(device)
        self.label_ids = [self._single_token(label) for label in self.labels]
        self.null_id = self._single_token(null_label)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> "GenerativeListwiseReranker":
        """A model, tokenizer and (for a vision-language model) processor from a local folder."""
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        path = str(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError):
            processor, model = None, AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        return cls(model, tokenizer, processor=processor, **kwargs)

    def _single_token(self, label: str) -> int:
        ids = self.tokenizer.encode(label, add_special_tokens=False)
        if len(ids) != 1:
            raise VitrineError(f"label {label!r} is {len(ids)} tokens for this tokenizer; labels must be one token")
        return int(ids[0])

    def prompt(self, query: RerankQuery, products: Sequence[Any]) -> str:
        """The chunk as text; it ends at the generation position, where the answer's label would go."""
        lines = [INSTRUCTION, f"Query: {query.text or '(a photo)'}"]
        for label, product in zip(self.labels, products):
            text = product.text if product is not None else ""
            lines.append(f"{label} : {text[: self.max_chars]}")
        lines.append(f"{self.null_label} : none of these")
        lines.append("Answer :")
        return "\n".join(lines)

    @torch.inference_mode()
    def chunk_logits(self, query: RerankQuery, chunks: Sequence[Sequence[Candidate]]) -> tuple[list[np.ndarray], np.ndarray]:
        """Per chunk, the label logits of its candidates, and the NULL logits ``(chunks,)``, read at the
        last position of one left-padded batch."""
        prompts = [self.prompt(query, [c.product for c in chunk]) for chunk in chunks]
        inputs = self._inputs(query, prompts)
        logits = self.model(**inputs).logits[:, -1, :].float().cpu()
        local = [logits[row, self.label_ids[:len(chunk)]].numpy() for row, chunk in enumerate(chunks)]
        return local, logits[:, self.null_id].numpy()

    def _inputs(self, query: RerankQuery, prompts: list[str]) -> dict[str, torch.Tensor]:
        if self.processor is not None and query.image is not None:
            from vitrine.catalog.images import open_image

            image = open_image(query.image)
            messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}] for p in prompts]
            texts = [self.processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
            self.processor.tokenizer.padding_side = "left"
            inputs = self.processor(text=texts, images=[image] * len(texts), return_tensors="pt", padding=True)
        else:
            # Left padding keeps every prompt's last token at the last position, the one we read.
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            inputs = dict(self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False))
            # Positions count real tokens only, so a padded prompt reads exactly as it would alone
            # (models with absolute position embeddings would otherwise see it shifted).
            inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return {name: value.to(self.device) for name, value in inputs.items()}

    def rank(self, query: RerankQuery, candidates: Sequence[Candidate]) -> list[Ranked]:
        parts = chunk_slices(len(candidates), self.chunk_size)
        if not parts:
            return []
        chunks = [list(candidates[part]) for part in parts]
        local, null = self.chunk_logits(query, chunks)
        absolute = [1.0 / (1.0 + np.exp(-(scores - null[c]))) for c, scores in enumerate(local)]
        merged = hybrid_merge(local, absolute)
        return [Ranked(candidates[parts[c].start + i], float(absolute[c][i]), rank, parts[c].start + i)
                for rank, (c, i) in enumerate(merged, start=1)]
