"""Conditioned scoring and generation: z=None matches eval/lm.py on the plain model; batching is neutral."""

from __future__ import annotations

import pytest
import torch

from larimar.eval.lm import continuation_nll as hf_continuation_nll
from larimar.eval.lm import generate_greedy as hf_generate_greedy
from larimar.model import ConditioningConfig, MemoryConditionedDecoder
from larimar.model.text import continuation_nll, encode_pairs, generate, join_continuation, score_tokens
from tests.tiny import bpe_tokenizer, llama

PROMPTS = ["Toko Yasuda plays the", "The mother tongue of Danielle Darrieux is", "Paris", "The capital "]
CONTS = ["guitar", "French", "is the capital of France", "Paris"]
CODE = 6


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def decoder(tokenizer) -> MemoryConditionedDecoder:
    model = MemoryConditionedDecoder(llama(tokenizer).double(), ConditioningConfig(code_size=CODE, mode="kv", embedding_offset=True, init_std=2.0))
    torch.manual_seed(3)
    with torch.no_grad():
        model.offset_map.weight.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def z() -> torch.Tensor:
    torch.manual_seed(4)
    return torch.randn(len(PROMPTS), CODE, dtype=torch.float64)


def test_no_z_equals_plain_model(decoder, tokenizer) -> None:
    plain = decoder.decoder
    assert continuation_nll(decoder, tokenizer, PROMPTS, CONTS) == hf_continuation_nll(plain, tokenizer, PROMPTS, CONTS)
    assert generate(decoder, tokenizer, PROMPTS, max_new_tokens=7) == hf_generate_greedy(plain, tokenizer, PROMPTS, 7)


def test_boundary_handling_matches_eval(tokenizer) -> None:
    from larimar.eval.lm import encode_pairs as eval_encode_pairs

    assert encode_pairs(tokenizer, PROMPTS, CONTS) == eval_encode_pairs(tokenizer, PROMPTS, CONTS)
    assert join_continuation("a the", "piano") == "a the piano" and join_continuation("a ", "b") == "a b"


@pytest.mark.parametrize("with_z", [False, True])
def test_batch_equals_one_by_one(decoder, tokenizer, z, with_z: bool) -> None:
    zz = z if with_z else None
    single = [continuation_nll(decoder, tokenizer, [p], [c], z=None if zz is None else zz[i : i + 1])[0]
              for i, (p, c) in enumerate(zip(PROMPTS, CONTS))]
    assert continuation_nll(decoder, tokenizer, PROMPTS, CONTS, z=zz) == pytest.approx(single, abs=1e-9)
    assert continuation_nll(decoder, tokenizer, PROMPTS, CONTS, z=zz, batch_size=3) == pytest.approx(single, abs=1e-9)
    texts = [generate(decoder, tokenizer, [p], z=None if zz is None else zz[i : i + 1], max_new_tokens=6)[0]
             for i, p in enumerate(PROMPTS)]
    assert generate(decoder, tokenizer, PROMPTS, z=zz, max_new_tokens=6) == texts


def test_padding_invariance_with_z(decoder, tokenizer, z) -> None:
    short = continuation_nll(decoder, tokenizer, PROMPTS[2:3], CONTS[2:3], z=z[2:3])
    padded = continuation_nll(decoder, tokenizer, [PROMPTS[2], PROMPTS[1] * 3], [CONTS[2], CONTS[1]], z=z[[2, 1]])
    assert padded[0] == pytest.approx(short[0], abs=1e-9)


def test_z_changes_the_output(decoder, tokenizer, z) -> None:
    assert continuation_nll(decoder, tokenizer, PROMPTS, CONTS, z=z) != continuation_nll(decoder, tokenizer, PROMPTS, CONTS)


def test_score_tokens(decoder, tokenizer) -> None:
    [scores] = score_tokens(decoder, tokenizer, ["Paris"], ["is the capital of France"])
    assert tokenizer.decode(scores.targets) == " is the capital of France"
    assert scores.log_probs.shape == scores.predicted.shape == scores.targets.shape
    assert scores.accuracy == (scores.predicted == scores.targets).double().mean().item()
    assert -scores.log_probs.mean().item() == continuation_nll(decoder, tokenizer, ["Paris"], ["is the capital of France"])[0]


def test_errors(decoder, tokenizer, z) -> None:
    with pytest.raises(ValueError, match="one row per prompt"):
        continuation_nll(decoder, tokenizer, PROMPTS, CONTS, z=z[:2])
    with pytest.raises(ValueError, match="one row per prompt"):
        generate(decoder, tokenizer, PROMPTS, z=z[0])
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        continuation_nll(decoder, tokenizer, PROMPTS[:2], CONTS[:1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(decoder, tokenizer, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="empty prompt"):
        generate(decoder, tokenizer, [""])
