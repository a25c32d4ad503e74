"""Question episodes for late-fusion training: a fact is written, a question about it is asked
in the decoder's chat format, and the target reply states the fact and ends the turn.

Facts come from
* CounterFact train cases: the prompt completed with the new answer, asked with a question formed
  from the relation's wording (`larimar.train.scope.QUESTIONS`);
* CounterFact train cases written as a question and its answer ("Q: Where is X located? A: Y."),
  asked in the relation's other wording; the reply restates what was written;
* templated personal and office facts (`larimar.train.scope.TEMPLATES`: names, numbers, dates,
  passwords, places);
* training-corpus sentences that define their subject (WordNet glosses, Wikipedia "X is a ...").

A share of questions is typed casually. No evaluation set is read. The cached states are those
of `build_cache` with the chat prompt in front of the reply (`ChatExample`), so a training step
scores the reply's tokens after the prompt, as `ask` decodes them: the readout is the fact's own
latent (what `Memory.recall` gives back by key) and the sequence channel's context restarts at
the reply's start.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.chat import chat_prompt
from .corpus import load_records
from .scope import QUESTIONS, casual, relation, templated_pairs

QA_SHAPES = ("Q: {q} A: {a}.", "Question: {q} Answer: {a}.", "{q} {a}.", "{q} - {a}.")
"""How a question-and-answer fact is written."""
_SUBJECT = re.compile(r"^((?:The )?[A-Z][\w'.&-]*(?: [\w'.&-]+){0,5}?) (is|was|are|were) (?:a|an|the|one of) ")
_NOT_SUBJECTS = {"it", "he", "she", "they", "this", "these", "that", "those", "there", "its", "his", "her", "their",
                 "one", "some", "many", "most", "all", "both", "each", "today", "here", "what", "which", "who"}


@dataclass(frozen=True)
class ChatExample:
    """One question episode: the written fact, the user's question, the decoder's prompt."""

    fact: str
    question: str
    prompt: str


def corpus_pairs(sentences: list[tuple[str, str]], count: int, rng: random.Random) -> list[tuple[str, str]]:
    """Up to `count` (sentence, question) pairs from corpus (text, source) lines that define their
    subject, drawn in turn from Wikipedia, named entities, nouns, verbs and adjectives/adverbs:
    "Oakland is a city ..." -> "What is Oakland?"; "To respire is to ..." -> "What does it mean
    to respire?"; "Able means ..." -> "What does able mean?"."""
    kinds: dict[str, list[tuple[str, str]]] = {}
    for text, source in sentences:
        kind, question = _definition_question(text, source, rng)
        if question:
            kinds.setdefault(kind, []).append((text, question))
    for items in kinds.values():
        rng.shuffle(items)
    out: list[tuple[str, str]] = []
    for k in range(count):
        pools = [items for items in kinds.values() if len(items) > k]
        if not pools:
            break
        out += [items[k] for items in pools[: count - len(out)]]
    return out[:count]


def _definition_question(text: str, source: str, rng: random.Random) -> tuple[str, str | None]:
    """(kind, a question the sentence answers) or (kind, None) when it defines no subject."""
    if source == "wordnet_verb" and text.startswith("To ") and " is to " in text:
        verb = text[3:].split(" is to ", 1)[0]
        return "verb", rng.choice(("What does it mean to {}?", "What does '{}' mean?")).format(verb)
    if source in ("wordnet_adj", "wordnet_adv") and " means " in text:
        word = _as_common(text.split(" means ", 1)[0])
        return "adjective", rng.choice(("What does {} mean?", "What is the meaning of '{}'?")).format(word)
    if source == "wordnet_noun" and " is " in text:
        noun = _as_common(text.split(" is ", 1)[0])
        forms = ("What is {}?", "What does '{}' mean?", "What is meant by {}?", "Define {}.")
        return "noun", (rng.choice(forms).format(noun) if len(noun.split()) <= 4 else None)
    if source in ("wordnet_entity", "wikipedia"):
        match = _SUBJECT.match(text)
        if not match or match.group(1).split()[0].lower() in _NOT_SUBJECTS:
            return source, None
        subject, verb = match.group(1), match.group(2)
        subject = "the" + subject[3:] if subject.startswith("The ") else subject
        forms = (f"What {verb} {subject}?", f"Tell me about {subject}.", f"What do you know about {subject}?")
        return source, rng.choice(forms)
    return source, None


def _as_common(word: str) -> str:
    """A gloss's capitalised first word as it reads mid-sentence ("Able" -> "able", "DNA" kept)."""
    return word[0].lower() + word[1:] if word[1:].islower() else word


def question_pairs(records: list[dict[str, Any]], cases: int, templated: int, casual_share: float,
                   seed: int, *, qa: int = 0, corpus: list[tuple[str, str]] | None = None,
                   corpus_count: int = 0) -> list[tuple[str, str]]:
    """(fact, question) pairs: up to `cases` CounterFact cases whose relation has question forms,
    one question each; the next `qa` such cases written as a question and its answer, asked in
    the other wording; `templated` templated facts; `corpus_count` defining sentences of the
    `corpus` (text, source) lines; a `casual_share` of all questions typed casually."""
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    pairs: list[tuple[str, str]] = []
    for i in order:
        if len(pairs) >= cases + qa:
            break
        r = records[i]
        rel = relation(r["prompt"].replace(r["subject"], "{}"))
        if rel is None or not r["target_new"].strip():
            continue
        answer, forms = r["target_new"].strip(), [q.format(r["subject"]) for q in QUESTIONS[rel][1]]
        if len(pairs) < cases:
            pairs.append((f"{r['prompt'].strip()} {answer}.", rng.choice(forms)))
        else:
            written = rng.choice(forms)
            asked = rng.choice([q for q in forms if q != written] or forms)
            pairs.append((rng.choice(QA_SHAPES).format(q=written, a=answer), asked))
    facts: dict[str, list[str]] = {}
    for query, fact, label, _ in templated_pairs(random.Random(seed + 1), templated, 0):
        if label == 1:
            facts.setdefault(fact, []).append(query)
    pairs += [(fact, rng.choice(questions)) for fact, questions in facts.items()]
    pairs += corpus_pairs(corpus or [], corpus_count, random.Random(seed + 2))
    out = [(fact, casual(q) if rng.random() < casual_share else q) for fact, q in pairs]
    rng.shuffle(out)
    return out


def load_examples(path: str | Path, tokenizer: Any, cases: int, templated: int, casual_share: float,
                  seed: int, *, qa: int = 0, corpus: str | Path | None = None,
                  corpus_count: int = 0) -> list[ChatExample]:
    """Question episodes from the CounterFact train file at `path` (EasyEdit flat JSON) and, with
    `corpus_count`, the training corpus JSONL at `corpus` (`larimar corpus`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fusion.questions: no file at {path}; pass the CounterFact train split (flat JSON)")
    sentences = None
    if corpus_count:
        if corpus is None or not Path(corpus).is_file():
            raise FileNotFoundError(f"fusion.question_corpus: no corpus file at {corpus}; build it with "
                                    "`larimar corpus` and set data.corpus")
        sentences = load_records(corpus)
    records = json.loads(path.read_text())
    pairs = question_pairs(records, cases, templated, casual_share, seed, qa=qa, corpus=sentences,
                           corpus_count=corpus_count)
    return [ChatExample(fact, question, chat_prompt(tokenizer, question)[0]) for fact, question in pairs]
