"""Larimar: loading, the scope detector, and that out-of-scope queries get the base decoder exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import larimar
from larimar.editing import Larimar
from larimar.eval.lm import continuation_nll as hf_continuation_nll
from larimar.eval.lm import generate_greedy as hf_generate_greedy
from larimar.model.text import continuation_nll
from tests.tiny import SENTENCES

FACT = "Paris is the capital of France."
PROMPT = "Paris is the capital of"
UNRELATED = "A dog ran across the green field."
CANDIDATES = ["France", "Germany", "the sea"]


@pytest.fixture()
def memory(lm: Larimar) -> larimar.Memory:
    memory = lm.new_memory()
    memory.write([FACT, SENTENCES[1]])
    return memory


def similarity(lm: Larimar, memory: larimar.Memory, prompt: str) -> float:
    decision = lm.scope(prompt, memory, scope_threshold=1.0)
    assert decision.similarity is not None
    return decision.similarity


def out_of_scope_threshold(lm: Larimar, memory: larimar.Memory, prompt: str) -> float:
    """A threshold just above the prompt's similarity to the nearest fact."""
    return min(1.0, similarity(lm, memory, prompt) + 1e-3)


def test_exports() -> None:
    assert larimar.Larimar is Larimar and callable(larimar.load) and larimar.Memory is not None
    assert larimar.__version__


def test_missing_builtin_model_is_explained(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("larimar.editing.larimar.BUILTIN_DIR", tmp_path)  # an install without the weights
    with pytest.raises(FileNotFoundError, match="built-in Larimar model is not available yet"):
        larimar.load()


def test_load_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Larimar model"):
        larimar.load(tmp_path)


def test_scope_decisions(lm: Larimar, memory: larimar.Memory) -> None:
    facts = {f.text: f.id for f in memory.facts()}
    exact = lm.scope(FACT, memory, scope_threshold=0.999)
    assert exact.in_scope and exact.fact_id == facts[FACT] and exact.similarity == pytest.approx(1.0)
    assert exact.z is not None and exact.z.shape == (1, lm.model.config.memory.code_size)
    threshold = out_of_scope_threshold(lm, memory, UNRELATED)
    unrelated = lm.scope(UNRELATED, memory, scope_threshold=threshold)
    assert not unrelated.in_scope and unrelated.z is None and unrelated.fact_id in facts.values()
    assert lm.scope(UNRELATED, memory, scope_threshold=-1.0).in_scope
    assert not lm.scope(FACT, None).in_scope and lm.scope(FACT, lm.new_memory()).similarity is None


def test_in_scope_readout_is_the_scaled_recall_of_the_nearest_item(lm: Larimar, memory: larimar.Memory) -> None:
    decision = lm.scope(PROMPT, memory, scope_threshold=-1.0)
    row = [f.id for f in memory.facts()].index(decision.fact_id)
    expected = (lm.model.config.readout_scale * memory.items.latents[row : row + 1]).float()
    torch.testing.assert_close(decision.z, expected, rtol=1e-5, atol=1e-5)


def test_threshold_defaults_and_overrides(lm: Larimar, memory: larimar.Memory) -> None:
    assert lm.scope_threshold == lm.model.config.scope_threshold
    everything = Larimar(lm.model, scope_threshold=-1.0)
    assert everything.ask(UNRELATED, memory, max_new_tokens=2).in_scope
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        Larimar(lm.model, scope_threshold=1.5)
    with pytest.raises(ValueError, match="cosine similarity"):
        lm.score(PROMPT, CANDIDATES, memory, scope_threshold=-2)


def test_out_of_scope_is_exactly_the_base_decoder(lm: Larimar, memory: larimar.Memory) -> None:
    hf_model, tok = lm.model.decoder.decoder, lm.tokenizer
    threshold = out_of_scope_threshold(lm, memory, PROMPT)
    base = hf_continuation_nll(hf_model, tok, [PROMPT] * 3, CANDIDATES)
    assert lm.score(PROMPT, CANDIDATES, memory, scope_threshold=threshold) == base
    assert lm.score(PROMPT, CANDIDATES) == base
    [base_text] = hf_generate_greedy(hf_model, tok, [PROMPT], max_new_tokens=6)
    assert lm.generate(PROMPT, memory, max_new_tokens=6, scope_threshold=threshold) == base_text
    assert lm.generate(PROMPT, max_new_tokens=6) == base_text


def test_in_scope_uses_the_memory(lm: Larimar, memory: larimar.Memory) -> None:
    decision = lm.scope(PROMPT, memory, scope_threshold=-1.0)
    scores = lm.score(PROMPT, CANDIDATES, memory, scope_threshold=-1.0)
    z = decision.z.expand(len(CANDIDATES), -1)
    assert scores == continuation_nll(lm.model.decoder, lm.tokenizer, [PROMPT] * 3, CANDIDATES, z=z)
    assert scores != lm.score(PROMPT, CANDIDATES)
    answer = lm.ask(PROMPT, memory, max_new_tokens=6, scope_threshold=-1.0)
    assert answer.in_scope and answer.fact_id == decision.fact_id and answer.similarity == decision.similarity
    assert isinstance(answer.text, str)


def test_generate_many_matches_one_by_one(lm: Larimar, memory: larimar.Memory) -> None:
    """Batched, mixed in and out of scope (left padding included), each text is the one-prompt one."""
    prompts = [PROMPT, UNRELATED, "Paris is", SENTENCES[1][:20], PROMPT]
    threshold = similarity(lm, memory, PROMPT) - 1e-3  # PROMPT in scope, UNRELATED not
    decisions = [lm.scope(p, memory, threshold).in_scope for p in prompts]
    assert any(decisions) and not all(decisions)
    want = [lm.generate(p, memory, max_new_tokens=5, scope_threshold=threshold) for p in prompts]
    assert lm.generate_many(prompts, memory, max_new_tokens=5, scope_threshold=threshold, batch_size=3) == want
    assert lm.generate_many([UNRELATED], None, max_new_tokens=5) == [lm.generate(UNRELATED, None, 5)]
    with pytest.raises(ValueError, match="list of strings"):
        lm.generate_many(PROMPT, memory)  # type: ignore[arg-type]


def test_query_errors(lm: Larimar, memory: larimar.Memory) -> None:
    with pytest.raises(ValueError, match="prompt is empty"):
        lm.generate("  ", memory)
    with pytest.raises(ValueError, match="prompt must be a string"):
        lm.score(3, CANDIDATES)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty list of strings"):
        lm.score(PROMPT, "France")
    with pytest.raises(ValueError, match="non-empty list"):
        lm.score(PROMPT, [])
