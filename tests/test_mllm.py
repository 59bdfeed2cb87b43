"""MLLM2vec on a tiny, randomly initialised Qwen2-VL built here (nothing is downloaded).

The tokenizer is a word-level vocabulary written in the test (``tokenizers`` WordLevel): Qwen's real
BPE tokenizer would have to come from the hub. The image processor is Qwen2-VL's own, sized small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import draw_product
from vitrine.encoders import FeatureCache, load_image_encoder, load_text_encoder
from vitrine.encoders.mllm import MLLMEmbedder, MLLMImageEncoder, MLLMPrompts, MLLMTextEncoder
from vitrine.errors import VitrineError

transformers = pytest.importorskip("transformers")

SPECIAL = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
WORDS = "summarize the above product in one word: red apple blue coffee mug wool scarf".split()


def tiny_parts():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vocab = {"[UNK]": 0}
    for token in SPECIAL + WORDS:
        vocab.setdefault(token, len(vocab))
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="<|endoftext|>",
                                                     eos_token="<|endoftext|>", additional_special_tokens=SPECIAL[1:])
    # 28x28 pixel patches after merging: a 56..112 px image gives 4..16 image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    config = transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"])
    torch.manual_seed(0)
    return transformers.Qwen2VLForConditionalGeneration(config), tokenizer, image_processor


@pytest.fixture(scope="module")
def embedder() -> MLLMEmbedder:
    return MLLMEmbedder(*tiny_parts())


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-qwen2-vl")
    model, tokenizer, image_processor = tiny_parts()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder


def photo(colour: tuple[int, int, int], size: tuple[int, int] = (80, 60)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_texts_and_images_give_unit_vectors_of_the_hidden_width(embedder):
    texts = embedder.encode_texts(["red apple", "blue coffee mug", "wool scarf"])
    images = embedder.encode_images([photo((200, 20, 20)), photo((20, 20, 200), (100, 100))])
    assert texts.shape == (3, 32) and images.shape == (2, 32) == (2, embedder.dim)
    assert texts.dtype == images.dtype == np.float32
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(texts[0], texts[1], atol=1e-3) and not np.allclose(images[0], images[1], atol=1e-3)
    assert embedder.encode_texts([]).shape == (0, 32)


def test_every_prompt_ends_in_the_embedding_token(embedder):
    embed_id = embedder.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    texts = embedder.text_batch(["red apple", "blue coffee mug with a very long description " * 3])
    images = embedder.image_batch([photo((1, 2, 3)), photo((3, 2, 1), (112, 112))])
    for batch in (texts, images):
        assert (batch["input_ids"][:, -1] == embed_id).all() and (batch["attention_mask"][:, -1] == 1).all()
    pad = embedder.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    counts = (images["input_ids"] == pad).sum(dim=1)
    assert counts.tolist() == (images["image_grid_thw"].prod(dim=1) // 4).tolist() and counts[0] < counts[1]


def test_the_pooled_vector_is_the_last_token_hidden_state(embedder):
    batch = embedder.text_batch(["red apple"])
    with torch.no_grad():
        hidden = embedder.model(**batch, output_hidden_states=True).hidden_states[-1][0, -1]
    expected = (hidden / hidden.norm()).numpy()
    assert np.allclose(embedder.embed(batch)[0], expected, atol=1e-5)


def test_deterministic_and_independent_of_batch_padding(embedder):
    texts = ["red apple", "blue coffee mug wool scarf red apple"]
    together = embedder.encode_texts(texts)
    assert np.array_equal(together, embedder.encode_texts(texts))
    alone = np.concatenate([embedder.encode_texts([text]) for text in texts])
    assert np.allclose(together, alone, atol=1e-4)  # left padding is masked out
    images = [photo((200, 20, 20)), photo((20, 200, 20), (112, 90))]
    assert np.allclose(embedder.encode_images(images, batch_size=2),
                       np.concatenate([embedder.encode_images([image]) for image in images]), atol=1e-4)


def test_a_prompt_token_missing_from_the_vocabulary_is_named():
    model, tokenizer, image_processor = tiny_parts()
    with pytest.raises(VitrineError, match="no token '<emb>'"):
        MLLMEmbedder(model, tokenizer, image_processor, prompts=MLLMPrompts(embed_token="<emb>"))


def test_registry_loads_a_local_folder_as_both_encoders_and_caches_features(saved_model, tmp_path):
    name = f"mllm:{saved_model}"
    text_encoder, image_encoder = load_text_encoder(name), load_image_encoder(name)
    assert isinstance(text_encoder, MLLMTextEncoder) and isinstance(image_encoder, MLLMImageEncoder)
    assert text_encoder.embedder is image_encoder.embedder  # one copy of the model for both towers
    assert text_encoder.name == image_encoder.name == name and text_encoder.dim == 32
    reference = MLLMEmbedder(*tiny_parts())
    assert np.allclose(text_encoder.encode(["red apple"]), reference.encode_texts(["red apple"]), atol=1e-5)

    paths = [str(draw_product(tmp_path / f"{i}.png", "circle", (40 * i, 90, 200), size=96)) for i in range(3)]
    cache = FeatureCache(tmp_path / "features.sqlite")
    first = cache.images(image_encoder, paths)
    calls = []
    image_encoder.embedder.embed, original = (lambda batch: calls.append(1) or original(batch)), image_encoder.embedder.embed
    try:
        again = cache.images(image_encoder, paths)
    finally:
        del image_encoder.embedder.embed
    assert np.array_equal(first, again) and not calls  # stage 1 reads cached features, as for any encoder


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(VitrineError, match="MLLM folder not found"):
        load_text_encoder(f"mllm:{tmp_path / 'nowhere'}")


def test_stage_one_trains_towers_on_cached_mllm_features(saved_model, tmp_path):
    from dataclasses import replace

    from vitrine.catalog.product import Pair, Product
    from vitrine.config import TrainingConfig
    from vitrine.training import ContrastiveTrainer, build_training_set
    from vitrine.training.trainer import tower_config

    name = f"mllm:{saved_model}"
    text_encoder, image_encoder = load_text_encoder(name), load_image_encoder(name)
    colours = {"apple": (200, 30, 30), "mug": (30, 60, 200), "scarf": (40, 150, 60)}
    products = [Product(key, f"{key} red blue", images=(str(draw_product(tmp_path / f"{key}.png", "circle", colour,
                                                                         size=96)),))
                for key, colour in colours.items()]
    pairs = [Pair(key, query_image=str(draw_product(tmp_path / f"{key}-{i}.png", "circle", colour, size=80 + 8 * i)),
                  query_key=f"{key}-{i}") for key, colour in colours.items() for i in range(3)]
    config = replace(TrainingConfig(), epochs=3, batch_size=4, hidden=16, dim=8, matryoshka="", keyword_pairs=False,
                     dev_fraction=0.0)
    data = build_training_set(products, pairs, text_encoder, image_encoder, FeatureCache(tmp_path / "f.sqlite"),
                              config, progress=False)
    assert data.product_text.shape == (3, 32) and data.query_image.shape == (9, 32)
    towers = tower_config(config, name, name, text_encoder.dim, image_encoder.dim)
    result = ContrastiveTrainer(data, config, towers, tmp_path / "model", progress=False).fit()
    assert result.steps == 9 and np.isfinite(result.losses).all()
