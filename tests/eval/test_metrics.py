"""Metric functions: hand-computed values, edge cases, properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from larimar.eval import metrics as m

nlls = st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=1, max_size=20)


def test_prob_success_and_magnitude() -> None:
    assert m.prob_success([0.1, 2.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(100 / 3)  # tie fails
    want = 100 * ((math.exp(-0.1) - math.exp(-1.0)) + (math.exp(-2.0) - math.exp(-1.0))) / 2
    assert m.prob_magnitude([0.1, 2.0], [1.0, 1.0]) == pytest.approx(want)


@given(nlls)
def test_success_is_antisymmetric_without_ties(values: list[float]) -> None:
    other = [v + 0.5 for v in values]
    assert m.prob_success(values, other) == 100.0
    assert m.prob_success(other, values) == 0.0
    assert m.prob_magnitude(values, other) == pytest.approx(-m.prob_magnitude(other, values))


def test_empty_inputs_give_nan() -> None:
    assert math.isnan(m.prob_success([], []))
    assert math.isnan(m.prob_magnitude([], []))
    assert math.isnan(m.fluency([]))
    assert math.isnan(m.token_accuracy([]))
    assert math.isnan(m.locality_rate([], []))
    assert math.isnan(m.harmonic_score())
    assert math.isnan(m.mean([]))
    assert m.ngram_entropy("") == 0.0


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 preferred NLLs but 1"):
        m.prob_success([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="prompt 0: 2 argmax tokens before the edit, 1 after"):
        m.locality_rate([[1, 2]], [[1]])


def test_harmonic_score() -> None:
    assert m.harmonic_score(100.0, 50.0, 100.0) == pytest.approx(3 / (1 / 100 + 1 / 50 + 1 / 100))
    assert m.harmonic_score(100.0, 0.0, 80.0) == 0.0
    assert math.isnan(m.harmonic_score(100.0, math.nan))


def test_ngram_entropy_matches_rome_formula() -> None:
    text = "a b a b c"  # bigrams: ab x2, ba, bc; trigrams: aba, bab, abc
    h2 = -(0.5 * math.log2(0.5) + 2 * 0.25 * math.log2(0.25))
    h3 = math.log2(3)
    assert m.ngram_entropy(text) == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    assert m.ngram_entropy("the the the the the the") == 0.0  # degenerate repetition
    assert m.fluency([text, "x y"]) == pytest.approx((m.ngram_entropy(text) + 1 / 3 * 0) / 2)


def test_easyedit_token_metrics() -> None:
    assert m.token_accuracy([[True, False], [True]]) == pytest.approx(0.75)
    assert m.locality_rate([[1, 2, 3], [4]], [[1, 2, 0], [4]]) == pytest.approx((2 / 3 + 1) / 2)


def test_normalize_and_matches() -> None:
    assert m.normalize_answer("  The Piano!  ") == "piano"
    assert m.exact_match("the piano.", "Piano")
    assert not m.exact_match("piano player", "piano")
    assert m.contains_match("a famous piano player", "Piano")
    assert not m.contains_match("pianos", "piano")
    assert not m.exact_match("", "")
    assert not m.contains_match("anything", "the")  # normalises to empty


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (" piano. He also", "piano"),
        (" piano\nQuestion: x", "piano"),
        (" Washington, D.C.", "Washington, D.C"),
        ("", ""),
        (" no stop here", "no stop here"),
        (" 3.5 million people! yes", "3.5 million people"),
    ],
)
def test_natural_stop(text: str, want: str) -> None:
    assert m.natural_stop(text) == want


def test_token_f1() -> None:
    assert m.token_f1("the unmanned aircraft", "unmanned aircraft") == 1.0
    assert m.token_f1("unmanned boat", "unmanned aircraft") == pytest.approx(0.5)
    assert m.token_f1("", "") == 1.0
    assert m.token_f1("x", "") == 0.0
    assert m.token_f1("boat", "aircraft") == 0.0
