"""The generative listwise adapter on a tiny, randomly initialised causal LM built here (nothing downloaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from vitrine.catalog import Product  # noqa: E402
from vitrine.errors import VitrineError  # noqa: E402
from vitrine.rerank.generative import LABELS, NULL_LABEL, GenerativeListwiseReranker  # noqa: E402
from vitrine.rerank.reranker import Candidate, RerankQuery  # noqa: E402

WORDS = ["red", "apple", "blue", "mug", "wool", "scarf", "cone", "product", "query", "answer", "none", "of",
         "these", "which", "is", "exactly", "the", "one", "shopper", "looking", "for", "with", "its", "label",
         "or", "if", "them", "(a", "photo)", ":", "?", ",", ".", "it"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2}
    for token in list(LABELS) + [NULL_LABEL] + WORDS:
        vocab.setdefault(token.lower() if token not in LABELS and token != NULL_LABEL else token, len(vocab))
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]",
                                                     eos_token="[EOS]")
    return tokenizer


@pytest.fixture(scope="module")
def reranker() -> GenerativeListwiseReranker:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    model = transformers.LlamaForCausalLM(config)
    return GenerativeListwiseReranker(model, tokenizer, chunk_size=4)


def candidates(count: int) -> list[Candidate]:
    names = ["red apple", "blue mug", "wool scarf", "cone", "red mug", "blue scarf", "apple"]
    return [Candidate(key=i, score=1.0 - i / 100, product=Product(f"p{i}", names[i % len(names)]))
            for i in range(count)]


def test_ranks_every_candidate_once_when_k_is_not_a_multiple_of_m(reranker):
    found = candidates(11)  # chunks of 4, 4, 3
    ranked = reranker.rank(RerankQuery(text="red apple"), found)
    assert sorted(r.candidate.key for r in ranked) == list(range(11))
    assert [r.rank for r in ranked] == list(range(1, 12))
    assert all(0.0 < r.score < 1.0 for r in ranked)
    assert reranker.rank(RerankQuery(text="red apple"), []) == []


def test_scores_are_the_logits_at_the_generation_position(reranker):
    query = RerankQuery(text="blue mug")
    chunks = [candidates(4), candidates(7)[4:]]  # a short chunk gets left padding in the batch
    local, null = reranker.chunk_logits(query, chunks)
    assert [len(scores) for scores in local] == [4, 3]
    for row, chunk in enumerate(chunks):
        prompt = reranker.prompt(query, [c.product for c in chunk])
        ids = reranker.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            alone = reranker.model(**ids).logits[0, -1]
        np.testing.assert_allclose(local[row], alone[reranker.label_ids[:len(chunk)]].numpy(), atol=1e-4)
        assert null[row] == pytest.approx(float(alone[reranker.null_id]), abs=1e-4)


def test_hybrid_order_follows_local_scores_within_each_chunk(reranker):
    query = RerankQuery(text="wool scarf")
    found = candidates(8)
    local, _ = reranker.chunk_logits(query, [found[:4], found[4:]])
    ranked = reranker.rank(query, found)
    for chunk, scores in enumerate(local):
        positions = [r.position - 4 * chunk for r in ranked if r.position // 4 == chunk]
        assert list(scores[positions]) == sorted(scores, reverse=True)


def test_labels_must_be_single_tokens():
    tokenizer = tiny_tokenizer()
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(VitrineError, match="must be one token"):
        GenerativeListwiseReranker(model, tokenizer, chunk_size=2, labels=["A B", "C"])
