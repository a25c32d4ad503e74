"""The scope detector's features and network (`larimar.model.scope`)."""

from __future__ import annotations

import pytest
import torch

from larimar.model.scope import (
    FEATURES,
    PairFeatures,
    ScopeConfig,
    probability,
    same_word,
    words,
)
from tests.tiny import bpe_tokenizer


def one_layer(**kw) -> ScopeConfig:
    return ScopeConfig(w1=[[1.0] * len(FEATURES)], b1=[0.0], w2=[1.0], b2=0.0, **kw)


def test_words_keep_inner_apostrophes_and_hyphens() -> None:
    assert words("What is Sofia Nair's phone-number? 823-7496!") == ["What", "is", "Sofia", "Nair's",
                                                                     "phone-number", "823-7496"]


@pytest.mark.parametrize(("a", "b", "exact", "same"), [
    ("founded", "found", False, True), ("speaks", "speak", False, True), ("led", "leads", False, False),
    ("alexandrina", "alexandrine", False, True), ("alexandrina", "alexandrine", True, False),
    ("1998", "1999", False, False), ("paris", "paris", True, True),
])
def test_same_word_allows_endings_but_not_for_names_and_numbers(a: str, b: str, exact: bool, same: bool) -> None:
    assert same_word(a, b, exact=exact) is same


def test_features_see_a_missing_name_and_shared_words() -> None:
    features = PairFeatures(bpe_tokenizer())
    about = features("Where does Bruno Quist live?", "Bruno Quist lives on Elm Street.", 0.7, 0.8)
    other = features("Where does Olga Moreau live?", "Bruno Quist lives on Elm Street.", 0.7, 0.8)
    named = dict(zip(FEATURES, about.tolist())), dict(zip(FEATURES, other.tolist()))
    assert about.dtype == torch.float64 and about.shape == (len(FEATURES),)
    assert named[0]["cos_whole"] == 0.7 and named[0]["cos_head"] == 0.8
    assert named[0]["name_missing"] == 0.0 and named[0]["name_shared"] == 1.0
    assert named[1]["name_missing"] == 1.0 and named[1]["name_shared"] == 0.0
    assert named[0]["cover_query"] > named[1]["cover_query"]
    assert 0.0 <= named[1]["cover_text"] <= 1.0 and named[1]["missing_mass"] > named[0]["missing_mass"]


def test_the_pronoun_i_is_not_a_name() -> None:
    features = PairFeatures(bpe_tokenizer())
    for query in ("When am I seeing the dentist?", "Where did I'll park", "Who has what I've lent?"):
        named = dict(zip(FEATURES, features(query, "The dentist appointment is on Monday.", 0.5, 0.5).tolist()))
        assert named["name_missing"] == 0.0, query
    named = dict(zip(FEATURES, features("When am I seeing Dr Ito?", "The dentist is on Monday.", 0.5, 0.5).tolist()))
    assert named["name_missing"] == 1.0


@pytest.mark.parametrize(("query", "text", "unmet"), [
    ("When was Acme Corp founded?", "Acme Corp is owned by Siemens.", 1.0),
    ("how many games are there for the xbox one", "Xbox One is created by Square.", 1.0),
    ("When was Acme Corp founded?", "Acme Corp was founded in 1921.", 0.0),
    ("How old is Vera Quist?", "Vera Quist is forty years old.", 0.0),
    ("When is the budget review?", "The budget review is on Monday.", 0.0),
    ("Which day is the museum closed?", "The museum is closed on Mondays.", 0.0),
    ("How many people came?", "Hundreds of people came.", 0.0),
    ("Who owns Acme Corp?", "Acme Corp is owned by Siemens.", 0.0),
    ("When Acme Corp was sold, the staff held a", "Acme Corp is owned by Siemens.", 0.0),
    ("q: when did acme corp open", "Acme Corp is owned by Siemens.", 1.0),
])
def test_a_question_for_a_number_or_date_is_unmet_by_a_text_without_one(query: str, text: str, unmet: float) -> None:
    named = dict(zip(FEATURES, PairFeatures(bpe_tokenizer())(query, text, 0.5, 0.5).tolist()))
    assert named["number_unmet"] == unmet


def test_rarity_is_low_for_merged_common_words_and_one_for_split_ones() -> None:
    features = PairFeatures(bpe_tokenizer())
    assert features.rarity("zyxwvq") == 1.0  # several tokens
    assert 0.0 <= features.rarity("the") < 1.0


def test_probability_is_the_network_output() -> None:
    config = one_layer()
    x = torch.zeros(3, len(FEATURES), dtype=torch.float64)
    x[1] = 1.0
    p = probability(config, x)
    assert p.shape == (3,)
    torch.testing.assert_close(p[0], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(p[1], torch.sigmoid(torch.tanh(torch.tensor(len(FEATURES), dtype=torch.float64))))


def test_bad_scope_configs_are_explained() -> None:
    with pytest.raises(ValueError, match="re-run the scope stage"):
        one_layer(features=("cos_whole",))
    with pytest.raises(ValueError, match="need w1"):
        ScopeConfig(w1=[[1.0]], b1=[0.0], w2=[1.0], b2=0.0)
    with pytest.raises(ValueError, match="candidates"):
        one_layer(candidates=0)
