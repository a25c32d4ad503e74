"""continuation_nll / generate_greedy against manual computations on a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch

from larimar.eval.lm import continuation_nll, encode_pairs, generate_greedy, join_continuation

PROMPTS = ["Toko Yasuda, the", "The mother tongue of Danielle Darrieux is", "Paris"]
CONTS = ["piano", "French", "is the capital of France"]


def manual_nll(model, tokenizer, prompt: str, cont: str) -> float:
    full = tokenizer(join_continuation(prompt, cont))["input_ids"]
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert full[:n_prompt] == tokenizer(prompt)["input_ids"]  # this corpus has clean boundaries
    logits = model(input_ids=torch.tensor([full])).logits[0]
    logp = torch.log_softmax(logits, dim=-1)
    terms = [-logp[t - 1, full[t]].item() for t in range(n_prompt, len(full))]
    return sum(terms) / len(terms)


def test_join_continuation() -> None:
    assert join_continuation("a the", "piano") == "a the piano"
    assert join_continuation("a the ", "piano") == "a the piano"
    assert join_continuation("a the", " piano") == "a the piano"
    assert join_continuation("", "piano") == "piano"


def test_nll_equals_manual(tiny_model, tiny_tokenizer) -> None:
    got = continuation_nll(tiny_model, tiny_tokenizer, PROMPTS, CONTS)
    want = [manual_nll(tiny_model, tiny_tokenizer, p, c) for p, c in zip(PROMPTS, CONTS)]
    assert got == pytest.approx(want, abs=1e-9)


def test_padding_invariance_and_batch_equals_single(tiny_model, tiny_tokenizer) -> None:
    single = [continuation_nll(tiny_model, tiny_tokenizer, [p], [c])[0] for p, c in zip(PROMPTS, CONTS)]
    batched = continuation_nll(tiny_model, tiny_tokenizer, PROMPTS, CONTS, batch_size=8)
    by_two = continuation_nll(tiny_model, tiny_tokenizer, PROMPTS, CONTS, batch_size=2)
    assert batched == pytest.approx(single, abs=1e-9)
    assert by_two == pytest.approx(single, abs=1e-9)


def test_scores_only_continuation_tokens(tiny_tokenizer) -> None:
    (full, start), = encode_pairs(tiny_tokenizer, ["Toko Yasuda, the"], ["piano"])
    assert tiny_tokenizer.decode(full[start:]) == " piano"


def test_boundary_merge_scores_from_common_prefix(tiny_tokenizer) -> None:
    # The prompt's trailing " " token merges into " Paris": scoring starts where they part.
    prompt_ids = tiny_tokenizer("The capital ")["input_ids"]
    (full, start), = encode_pairs(tiny_tokenizer, ["The capital "], ["Paris"])
    assert full[: len(prompt_ids)] != prompt_ids
    assert start == len(prompt_ids) - 1
    assert tiny_tokenizer.decode(full[start:]) == " Paris"


def test_first_token_needs_context(tiny_model, tiny_tokenizer) -> None:
    (full, start), = encode_pairs(tiny_tokenizer, [""], ["piano guitar"])
    assert start == 1
    assert math.isfinite(continuation_nll(tiny_model, tiny_tokenizer, [""], ["piano guitar"])[0])


def test_errors(tiny_model, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        continuation_nll(tiny_model, tiny_tokenizer, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="adds no scorable token"):
        continuation_nll(tiny_model, tiny_tokenizer, ["a"], [""])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_greedy(tiny_model, tiny_tokenizer, ["a"], 0)


def manual_greedy(model, tokenizer, prompt: str, n: int) -> str:
    ids = tokenizer(prompt)["input_ids"]
    new: list[int] = []
    for _ in range(n):
        nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
        if nxt == tokenizer.eos_token_id:
            break
        new.append(nxt)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_generate_greedy_left_padding(tiny_model, tiny_tokenizer) -> None:
    batched = generate_greedy(tiny_model, tiny_tokenizer, PROMPTS, max_new_tokens=6)
    single = [generate_greedy(tiny_model, tiny_tokenizer, [p], 6)[0] for p in PROMPTS]
    manual = [manual_greedy(tiny_model, tiny_tokenizer, p, 6) for p in PROMPTS]
    assert batched == single == manual
