"""Question episodes for late-fusion training: a fact is written, a question about it is asked
in the decoder's chat format, and the target reply states the fact and ends the turn.

Facts come from CounterFact train cases (the prompt completed with the new answer; questions from
the relation's wording, `larimar.train.scope.QUESTIONS`) and from templated personal and office
facts (`larimar.train.scope.TEMPLATES`); a share of questions is typed casually. No evaluation
set is read. The cached states are those of `build_cache` with the chat prompt in front of the
reply (`ChatExample`), so a training step scores the reply's tokens after the prompt, as `ask`
decodes them: the readout is the fact's own latent (what `Memory.recall` gives back by key) and
the sequence channel's context restarts at the reply's start.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.chat import chat_prompt
from .scope import QUESTIONS, casual, relation, templated_pairs


@dataclass(frozen=True)
class ChatExample:
    """One question episode: the written fact, the user's question, the decoder's prompt."""

    fact: str
    question: str
    prompt: str


def question_pairs(records: list[dict[str, Any]], cases: int, templated: int, casual_share: float,
                   seed: int) -> list[tuple[str, str]]:
    """(fact, question) pairs: up to `cases` CounterFact cases whose relation has question forms,
    one question each, and `templated` templated facts; a `casual_share` typed casually."""
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    pairs: list[tuple[str, str]] = []
    for i in order:
        if len(pairs) >= cases:
            break
        r = records[i]
        rel = relation(r["prompt"].replace(r["subject"], "{}"))
        if rel is None or not r["target_new"].strip():
            continue
        fact = f"{r['prompt'].strip()} {r['target_new'].strip()}."
        pairs.append((fact, rng.choice(QUESTIONS[rel][1]).format(r["subject"])))
    facts: dict[str, list[str]] = {}
    for query, fact, label, _ in templated_pairs(random.Random(seed + 1), templated, 0):
        if label == 1:
            facts.setdefault(fact, []).append(query)
    pairs += [(fact, rng.choice(questions)) for fact, questions in facts.items()]
    out = [(fact, casual(q) if rng.random() < casual_share else q) for fact, q in pairs]
    rng.shuffle(out)
    return out


def load_examples(path: str | Path, tokenizer: Any, cases: int, templated: int, casual_share: float,
                  seed: int) -> list[ChatExample]:
    """Question episodes from the CounterFact train file at `path` (EasyEdit flat JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fusion.questions: no file at {path}; pass the CounterFact train split (flat JSON)")
    records = json.loads(path.read_text())
    return [ChatExample(fact, question, chat_prompt(tokenizer, question)[0])
            for fact, question in question_pairs(records, cases, templated, casual_share, seed)]
