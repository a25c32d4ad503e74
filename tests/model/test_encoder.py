"""SentenceEncoder on a tiny random BERT and a hand-made tokenizer (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from larimar.model.encoder import SentenceEncoder, mean_pool

WORDS = "the cat sat on a mat dog ran in park paris is capital of france".split()
HIDDEN = 16


@pytest.fixture
def tokenizer() -> BertTokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return BertTokenizer(vocab={word: i for i, word in enumerate(specials + WORDS + ["."])})


@pytest.fixture
def body(tokenizer: BertTokenizer) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()


def make(body: BertModel, tokenizer: BertTokenizer, **kwargs: object) -> SentenceEncoder:
    return SentenceEncoder(body, tokenizer, **kwargs).eval()


def test_mean_pool_ignores_masked_positions() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_latent_shape_and_identity_head(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body, tokenizer)
    assert encoder.code_size == encoder.hidden_size == HIDDEN
    assert torch.equal(encoder.head.weight, torch.eye(HIDDEN))
    batch = encoder.tokenize(["the cat sat on a mat .", "a dog ran"])
    latents = encoder(batch["input_ids"], batch["attention_mask"])
    assert latents.shape == (2, HIDDEN)
    assert torch.allclose(latents, encoder.pool(batch["input_ids"], batch["attention_mask"]))


def test_projection_head_when_sizes_differ(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body, tokenizer, code_size=40)
    assert encoder.head.weight.shape == (40, HIDDEN)
    assert encoder.head.bias is None
    assert encoder.encode(["the cat sat", "a dog ran in the park", "paris"]).shape == (3, 40)
    std = encoder.head.weight.std().item()
    assert 0.5 / HIDDEN**0.5 < std < 2.0 / HIDDEN**0.5


def test_padding_does_not_change_the_latent(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body, tokenizer, code_size=8)
    short = "a dog ran"
    alone = encoder.encode([short])
    padded = encoder.encode([short, "the cat sat on a mat in the park ."])
    assert encoder.tokenize([short, "the cat sat on a mat"])["attention_mask"][0].min() == 0
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-6)


def test_cls_pooling_takes_first_token(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body, tokenizer, pooling="cls")
    batch = encoder.tokenize(["the cat sat"])
    hidden = body(**batch).last_hidden_state
    torch.testing.assert_close(encoder.encode(["the cat sat"]), hidden[:, 0])


def test_embed_is_unit_norm_and_skips_head(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body, tokenizer, code_size=8)
    texts = ["the cat sat", "paris is the capital of france", "a dog"]
    embeddings = encoder.embed(texts, batch_size=2)
    assert embeddings.shape == (3, HIDDEN)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    batch = encoder.tokenize(texts)
    pooled = encoder.pool(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(pooled, dim=-1))


def test_batch_size_does_not_change_results(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body, tokenizer, code_size=8)
    texts = ["the cat sat", "a dog ran in the park", "paris", "france is a"]
    torch.testing.assert_close(encoder.encode(texts, batch_size=1), encoder.encode(texts))
    assert encoder.encode([]).shape == (0, 8)


def test_gradients_reach_head_and_body(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body, tokenizer, code_size=8).train()
    batch = encoder.tokenize(["the cat sat", "a dog"])
    encoder(batch["input_ids"], batch["attention_mask"]).square().sum().backward()
    assert encoder.head.weight.grad is not None
    assert body.embeddings.word_embeddings.weight.grad is not None


def test_frozen_body_gets_no_gradients(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = SentenceEncoder(body, tokenizer, code_size=8, trainable=False).train()
    assert not body.training, "a frozen body must stay in eval mode (no dropout)"
    assert all(not p.requires_grad for p in body.parameters())
    batch = encoder.tokenize(["the cat sat", "a dog"])
    encoder(batch["input_ids"], batch["attention_mask"]).square().sum().backward()
    assert encoder.head.weight.grad is not None
    assert all(p.grad is None for p in body.parameters())
    assert [name for name, p in encoder.named_parameters() if p.requires_grad] == ["head.weight"]


def test_encode_restores_training_mode(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body, tokenizer).train()
    encoder.encode(["the cat"])
    assert encoder.training and body.training


def test_float64_encoder(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body.double(), tokenizer, code_size=8)
    assert encoder.encode(["the cat"]).dtype == torch.float64


def test_bad_arguments_are_explained(body: BertModel, tokenizer: BertTokenizer) -> None:
    with pytest.raises(ValueError, match="pooling"):
        SentenceEncoder(body, tokenizer, pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="code_size"):
        SentenceEncoder(body, tokenizer, code_size=0)
    with pytest.raises(TypeError, match="list of strings"):
        SentenceEncoder(body, tokenizer).encode("the cat")  # type: ignore[arg-type]


def test_max_length_truncates(body: BertModel, tokenizer: BertTokenizer) -> None:
    encoder = make(body, tokenizer, max_length=4)
    assert encoder.tokenize(["the cat sat on a mat"])["input_ids"].shape == (1, 4)
