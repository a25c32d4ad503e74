"""Pure metric functions for knowledge editing; each family keeps its own name.

* ROME probability metrics (paper tables): from per-prompt mean token NLLs of the two
  candidate continuations -- success rates ES / PS / NS in %, magnitudes x100 of
  ``exp(-NLL)`` differences, the harmonic score S, and n-gram-entropy fluency.
* EasyEdit teacher-forced metrics: token accuracy and locality (unchanged argmax tokens).
* Generation metrics: exact / contains match after SQuAD-style normalisation, token F1 (zsRE),
  and :func:`natural_stop` to cut a free generation where a sentence ends.

Empty inputs give ``nan`` (no evidence), never an exception; :func:`mean` skips ``nan``.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

NAN = float("nan")


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean ignoring ``nan``; ``nan`` when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else NAN


# ---------------------------------------------------------------- ROME probability metrics


def prob_success(nll_preferred: Sequence[float], nll_other: Sequence[float]) -> float:
    """Share (%) of prompts where the preferred continuation is strictly more likely.

    ES: ``prob_success(nll_new, nll_true)`` on rewrite prompts; PS the same on paraphrases;
    NS: ``prob_success(nll_true, nll_new)`` on neighbourhood prompts. Ties count as failures.

    Args:
        nll_preferred: (P,) mean token NLL of the continuation that should win.
        nll_other: (P,) mean token NLL of the competing continuation.
    """
    _check_pairs(nll_preferred, nll_other)
    return 100.0 * mean(float(p < o) for p, o in zip(nll_preferred, nll_other))


def prob_magnitude(nll_preferred: Sequence[float], nll_other: Sequence[float]) -> float:
    """Mean of ``exp(-nll_preferred) - exp(-nll_other)``, x100 (ROME's "magnitude")."""
    _check_pairs(nll_preferred, nll_other)
    return 100.0 * mean(math.exp(-p) - math.exp(-o) for p, o in zip(nll_preferred, nll_other))


def harmonic_score(*rates: float) -> float:
    """Harmonic mean of success rates (ROME "S"); 0 if any is 0, ``nan`` if any is ``nan``."""
    if not rates or any(math.isnan(r) for r in rates):
        return NAN
    if any(r <= 0 for r in rates):
        return 0.0
    return len(rates) / sum(1.0 / r for r in rates)


def _check_pairs(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} preferred NLLs but {len(b)} competing NLLs")


# ---------------------------------------------------------------- fluency (ROME "GE")

_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(
    text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """ROME's ``compute_n_gram_entropy`` for one text, in bits.

    For each n, the entropy of the n-gram frequency distribution (log base 2); the result is
    the arithmetic mean of ``weights[i] * H_{ns[i]}``, i.e. ``(2/3 H2 + 4/3 H3) / 2`` by default.
    Words are split with a regex close to ``nltk.word_tokenize`` (words and punctuation marks).
    A text too short to have any n-gram contributes entropy 0 for that n.
    """
    if len(ns) != len(weights):
        raise ValueError(f"{len(ns)} n-gram orders but {len(weights)} weights")
    tokens = _WORD.findall(text)
    weighted = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        h = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        weighted.append(w * h)
    return sum(weighted) / len(weighted)


def fluency(texts: Sequence[str]) -> float:
    """Mean :func:`ngram_entropy` over generations (ROME "GE"); ``nan`` for no texts."""
    return mean(ngram_entropy(t) for t in texts)


# ---------------------------------------------------------------- EasyEdit teacher-forced


def token_accuracy(correct: Sequence[Sequence[bool]]) -> float:
    """EasyEdit rewrite accuracy: per prompt, the share of target tokens whose teacher-forced
    argmax equals the target token; averaged over prompts (a fraction in [0, 1])."""
    return mean(mean(float(c) for c in row) for row in correct)


def locality_rate(before: Sequence[Sequence[int]], after: Sequence[Sequence[int]]) -> float:
    """EasyEdit locality: per prompt, the share of argmax tokens unchanged by the edit."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} prompts before the edit but {len(after)} after")
    rates = []
    for i, (b, a) in enumerate(zip(before, after)):
        if len(b) != len(a):
            raise ValueError(f"prompt {i}: {len(b)} argmax tokens before the edit, {len(a)} after")
        rates.append(mean(float(x == y) for x, y in zip(b, a)))
    return mean(rates)


# ---------------------------------------------------------------- generation

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def natural_stop(text: str) -> str:
    """Cut a generation at its first newline or sentence end (``. ! ?`` before a space or the
    end) and strip surrounding whitespace; the sentence-ending mark is dropped."""
    text = text.lstrip().split("\n", 1)[0]
    match = _SENTENCE_END.search(text)
    return (text[: match.start()] if match else text).strip()


def exact_match(prediction: str, target: str) -> bool:
    """Normalised prediction equals the normalised target (both non-empty)."""
    target_n = normalize_answer(target)
    return bool(target_n) and normalize_answer(prediction) == target_n


def contains_match(prediction: str, target: str) -> bool:
    """Normalised target occurs as whole words in the normalised prediction."""
    target_n = normalize_answer(target)
    return bool(target_n) and f" {target_n} " in f" {normalize_answer(prediction)} "


def token_f1(prediction: str, target: str) -> float:
    """SQuAD token F1 between normalised strings; 1.0 if both are empty, 0.0 if one is."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(target).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)
