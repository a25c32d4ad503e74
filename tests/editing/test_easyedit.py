"""Larimar.edit: EasyEdit's request and metric layout, one sequential write per edit."""

from __future__ import annotations

import pytest

from larimar.editing import Larimar

PROMPTS = ["Paris is the capital of", "Toko Yasuda plays the"]
TARGETS = ["Germany", "piano"]
LOCALITY = {"neighborhood": {"prompt": ["The river flows north into the", "A dog ran across the green"],
                             "ground_truth": ["sea", "field"]}}


def test_edit_format(lm: Larimar) -> None:
    metrics, memory = lm.edit(PROMPTS, TARGETS, ground_truth=["France", "guitar"],
                              rephrase_prompts=["The capital of France is", ["Toko Yasuda performs on the"]],
                              locality_inputs=LOCALITY)
    assert len(metrics) == 2 and len(memory) == 2
    assert [f.text for f in memory.facts()] == ["Paris is the capital of Germany", "Toko Yasuda plays the piano"]
    assert memory.facts()[0].paraphrases == ("The capital of France is Germany",)
    for i, m in enumerate(metrics):
        assert m["case_id"] == i and m["time"] > 0
        assert m["requested_rewrite"]["prompt"] == PROMPTS[i] and m["requested_rewrite"]["target_new"] == TARGETS[i]
        assert m["requested_rewrite"]["locality"]["neighborhood"]["prompt"] == [LOCALITY["neighborhood"]["prompt"][i]]
        for part in ("pre", "post"):
            assert m[part]["portability"] == {}
            assert len(m[part]["rewrite_acc"]) == 1 and len(m[part]["rephrase_acc"]) == 1
            assert all(0.0 <= a <= 1.0 for a in m[part]["rewrite_acc"] + m[part]["rephrase_acc"])
        [loc] = m["post"]["locality"]["neighborhood_acc"]
        assert 0.0 <= loc <= 1.0


def test_out_of_scope_locality_is_perfect_and_memory_is_reused(lm: Larimar) -> None:
    memory = lm.new_memory()
    metrics, same = lm.edit(PROMPTS[0], TARGETS[0], locality_inputs={"nb": {"prompt": "The river flows north into the", "ground_truth": "sea"}},
                            memory=memory, scope_threshold=1.0)
    assert same is memory and len(memory) == 1
    assert metrics[0]["post"]["locality"]["nb_acc"] == [1.0]
    assert metrics[0]["post"]["rewrite_acc"] == metrics[0]["pre"]["rewrite_acc"]  # nothing in scope
    assert "rephrase_acc" not in metrics[0]["post"]


def test_edit_errors(lm: Larimar) -> None:
    with pytest.raises(ValueError, match=r"target_new must have one entry per prompt \(2\)"):
        lm.edit(PROMPTS, ["Germany"])
    with pytest.raises(ValueError, match="needs 'prompt' and 'ground_truth'"):
        lm.edit(PROMPTS, TARGETS, locality_inputs={"nb": {"prompt": ["a", "b"]}})
