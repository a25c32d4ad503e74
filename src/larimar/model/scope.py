"""The trained scope detector: does this query ask about that written text?

The detector sees one (query, item) pair at a time: the item's text and the cosine similarity
of the query to the item's two scope keys (the whole text's sentence embedding and its head's,
see `larimar.editing.encoding.encode_texts`), plus word-overlap features that a cosine misses:
whether the query's rare words (names, numbers, subjects) appear in the text, and whether a
question for a number or a date ("when", "how many") meets a text that states none. A word's rarity
comes from the decoder's BPE vocabulary: byte-pair merges are numbered roughly by frequency,
so a high token id, or a word that takes several tokens, is rare. A small network over these
features (`ScopeConfig`, fitted by `larimar.train.scope`) gives the probability that the query
is about the text; the query is in scope when the best candidate's probability reaches
the threshold.

Example:
    >>> features = PairFeatures(tokenizer)
    >>> x = features("Who founded Spotify?", "Spotify was founded by Louis Pasteur.", 0.71, 0.80)
    >>> probability(config, x[None])  # (1,)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

FEATURES = ("cos_whole", "cos_head", "cover_query", "cover_text", "missing_max", "shared_max",
            "name_missing", "name_shared", "shared_mass", "missing_mass", "number_unmet")
"""The pair features, in order (see `PairFeatures`)."""

WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")
ASKS_NUMBER = re.compile(
    r"(?:^|[:.!?]\s)\s*(?:when (?:did|does|do|is|was|were|are|will|would|has|have|had|can|could|should)"
    r"|how (?:many|much|old|long|tall|far|often|big)|(?:in )?(?:what|which) (?:year|date|age|day|month))\b",
    re.IGNORECASE)
"""A question, opening the query or one of its sentences, whose answer is a number or a date
("When did ...", "how many ..."; not the clause "When X died, ...")."""
NUMBER_WORDS = frozenset(
    ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred", "thousand", "million", "billion", "dozen", "century", "decade", "january", "february", "march", "april", "june", "july", "august", "september", "october", "november", "december", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "yesterday", "tomorrow"])
"""Words that state a number or a date without digits, also in the plural ("Mondays", "hundreds";
"one", "first", "second" and "may" are left out: they are as often a name's part, an ordinal or
a verb, "Xbox One")."""
FIRST_PERSON = frozenset(["i", "i'm", "i'd", "i'll", "i've"])
"""The pronoun "I" and its contractions: capitalised wherever they stand, yet never a name."""
FIRST_MERGE = 256
"""BPE ids below this are single bytes; rarity counts from here."""


@dataclass
class ScopeConfig:
    """A fitted scope detector: a one-hidden-layer network over `FEATURES`,
    p = sigmoid(w2 . tanh(W1 x + b1) + b2)."""

    w1: list[list[float]]
    """(hidden, F) first-layer weights, F in `FEATURES` order."""
    b1: list[float]
    """(hidden,) first-layer biases."""
    w2: list[float]
    """(hidden,) output weights."""
    b2: float
    """Output bias."""
    candidates: int = 8
    """Items (nearest by cosine) the detector examines per query."""
    features: tuple[str, ...] = FEATURES
    """The feature names the weights were fitted on (checked against `FEATURES`)."""

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        if self.features != FEATURES:
            raise ValueError(f"scope weights were fitted on features {list(self.features)}; this version "
                             f"computes {list(FEATURES)}: re-run the scope stage of `larimar train`")
        hidden = len(self.b1)
        if (len(self.w1) != hidden or any(len(row) != len(FEATURES) for row in self.w1)
                or len(self.w2) != hidden or hidden < 1):
            raise ValueError(f"scope weights: need w1 (hidden, {len(FEATURES)}), b1 and w2 (hidden,); "
                             f"got {len(self.w1)} rows, {len(self.b1)} and {len(self.w2)}")
        if self.candidates < 1:
            raise ValueError(f"scope.candidates must be >= 1; got {self.candidates}")


def logits(config: ScopeConfig, features: Tensor) -> Tensor:
    """(n,) log-odds that each query is about its text, from (n, F) features."""
    as_tensor = lambda v: torch.tensor(v, dtype=features.dtype, device=features.device)
    hidden = torch.tanh(features @ as_tensor(config.w1).T + as_tensor(config.b1))  # (n, hidden)
    return hidden @ as_tensor(config.w2) + config.b2


def probability(config: ScopeConfig, features: Tensor) -> Tensor:
    """(n,) probability that each query is about its text, from (n, F) features."""
    return torch.sigmoid(logits(config, features))


def words(text: str) -> list[str]:
    """The words of a text as written (letters and digits; inner apostrophes and hyphens kept)."""
    return WORD.findall(text)


def _norm(word: str) -> str:
    word = word.lower()
    return word.removesuffix("'s")


def same_word(a: str, b: str, exact: bool = False) -> bool:
    """Whether two normalised words are one word up to an ending ("found"/"founded", "speaks");
    names and numbers (`exact`) must be equal."""
    if a == b:
        return True
    if exact or any(c.isdigit() for c in a + b):
        return False
    shared = len(_common_prefix(a, b))
    return shared >= max(4, min(len(a), len(b)) - 2)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


class PairFeatures:
    """Computes the detector's features of (query, text) pairs with a decoder tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab = max(len(tokenizer), FIRST_MERGE + 2)
        self.rarity = lru_cache(maxsize=65536)(self._rarity)
        self._query = lru_cache(maxsize=4096)(self._query_words)
        self._text = lru_cache(maxsize=65536)(self._text_words)

    def _rarity(self, word: str) -> float:
        """0 for the commonest words, up to 1 for rare ones (a high BPE id, or several tokens)."""
        ids = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            return 1.0
        low, high = math.log(1 + FIRST_MERGE), math.log(self.vocab)
        return min(1.0, max(0.0, (math.log(1 + ids[0]) - low) / (high - low)))

    def __call__(self, query: str, text: str, cos_whole: float, cos_head: float) -> Tensor:
        """(F,) float64 features of one pair, in `FEATURES` order."""
        asked, asks_number = self._query(query)
        written, by_prefix, rarities, states_number = self._text(text)
        found, weight_q, shared_max, missing_max = 0.0, 0.0, 0.0, 0.0
        name_missing = name_shared = 0.0
        matched_text: set[int] = set()
        for word, name, r in asked:
            weight_q += r
            near = by_prefix.get(word[:4], ()) if len(word) >= 4 and not name else ()
            hits = [j for j, w in enumerate(written) if w == word or (j in near and same_word(word, w))]
            if hits:
                found += r
                shared_max = max(shared_max, r)
                matched_text.update(hits)
                name_shared = max(name_shared, float(name))
            else:
                missing_max = max(missing_max, r)
                name_missing = max(name_missing, float(name))
        weight_t = sum(rarities)
        cover_text = sum(rarities[j] for j in matched_text) / weight_t if weight_t else 0.0
        cover_query = found / weight_q if weight_q else 0.0
        number_unmet = float(asks_number and not states_number)
        return torch.tensor([cos_whole, cos_head, cover_query, cover_text, missing_max, shared_max,
                             name_missing, name_shared, found, weight_q - found, number_unmet], dtype=torch.float64)

    def _query_words(self, query: str) -> tuple[tuple[tuple[str, bool, float], ...], bool]:
        """A query's normalised words with whether each is a name or number and its rarity, and
        whether it asks for a number or a date."""
        asked = []
        for i, raw in enumerate(words(query)):
            word = _norm(raw)
            name = any(c.isdigit() for c in raw) or (i > 0 and raw[0].isupper() and word not in FIRST_PERSON)
            asked.append((word, name, self.rarity(word)))
        return tuple(asked), bool(ASKS_NUMBER.search(query))

    def _text_words(self, text: str) -> tuple[list[str], dict[str, frozenset[int]], list[float], bool]:
        """A text's normalised words, their positions by first four letters (words that
        `same_word` may join share them), their rarities, and whether it states a number."""
        written = [_norm(w) for w in words(text)]
        by_prefix: dict[str, set[int]] = {}
        for j, w in enumerate(written):
            if len(w) >= 4:
                by_prefix.setdefault(w[:4], set()).add(j)
        states_number = any(c.isdigit() for c in text) or any(
            w in NUMBER_WORDS or w.removesuffix("s") in NUMBER_WORDS for w in written)
        return (written, {k: frozenset(v) for k, v in by_prefix.items()}, [self.rarity(w) for w in written],
                states_number)
