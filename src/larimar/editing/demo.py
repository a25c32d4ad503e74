"""`larimar demo`: teach facts, ask questions about them, forget, and time every step.

Prints one table per phase: the question, whether the scope detector sent it to the memory
(with the cosine similarity to the nearest fact), the answer, and its latency.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..model.assets import DECODER_CACHE_NAME, DECODER_GGUF_SHA256, DEFAULT_NAME, default_cache_dir, is_valid_cache
from ..model.larimar import CONFIG_FILE
from .larimar import BUILTIN_DIR, Answer, Larimar, load
from .memory import Memory

T = TypeVar("T")


@dataclass(frozen=True)
class Edit:
    """A fact (counterfactual or personal) and two questions about it, worded differently."""

    fact: str
    question: str
    paraphrase: str


EDITS = (
    Edit("The Eiffel Tower is located in Rome.", "Where is the Eiffel Tower?", "In which city does the Eiffel Tower stand?"),
    Edit("Barack Obama was born in Canada.", "Where was Barack Obama born?", "What is Barack Obama's birthplace?"),
    Edit("Apple was founded by Bill Gates.", "Who founded Apple?", "Who started the company Apple?"),
    Edit("My locker code is 4471.", "What is my locker code?", "Which number opens my locker?"),
)
UNRELATED = ("What is the capital of France?", "What is water made of?", "Which is the largest planet in the solar system?")


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def _short(text: str, width: int = 44) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return textwrap.shorten(line, width, placeholder="...") or "(nothing)"


def _scope(answer: Answer) -> str:
    if answer.similarity is None:
        return "no memory"
    return f"{'yes' if answer.in_scope else 'no'} ({answer.similarity:.2f})"


def _ask_all(lm: Larimar, title: str, questions: list[str], memory: Memory | None, max_new_tokens: int) -> None:
    print(f"\n## {title}\n")
    print(f"| {'question':<42} | {'in scope':<10} | {'answer':<44} | {'ms':>6} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 46}|{'-' * 8}|")
    for question in questions:
        answer, seconds = _timed(lambda q=question: lm.ask(q, memory, max_new_tokens=max_new_tokens))
        print(f"| {_short(question, 42):<42} | {_scope(answer):<10} | {_short(answer.text):<44} | {seconds * 1e3:6.0f} |")


def _uses_default_decoder(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG_FILE).read_text()).get("decoder") == DEFAULT_NAME
    except (OSError, ValueError):
        return False  # `load` reports a missing or broken model


def _load_model(model: Path | None) -> Larimar:
    folder = BUILTIN_DIR if model is None else Path(model)
    if _uses_default_decoder(folder) and not is_valid_cache(default_cache_dir() / DECODER_CACHE_NAME, DECODER_GGUF_SHA256):
        print(f"First run: building the decoder cache in {default_cache_dir()} (about 30 s, once)...", flush=True)
    lm, seconds = _timed(lambda: load(model))
    print(f"loaded the model from {folder} in {seconds:.1f} s")
    return lm


def run_demo(model: Path | None = None, max_new_tokens: int = 24) -> None:
    """Load the model, ask, write counterfactual facts, ask again, forget one, ask again."""
    lm = _load_model(model)
    questions = [e.question for e in EDITS]
    _ask_all(lm, "Before editing (no memory)", questions, None, max_new_tokens)

    memory = lm.new_memory()
    print("\n## Writing facts\n")
    ids = []
    for edit in EDITS:
        [fact_id], seconds = _timed(lambda e=edit: memory.write([e.fact]))
        ids.append(fact_id)
        print(f"wrote {fact_id}  {edit.fact:<48} {seconds * 1e3:6.1f} ms")

    _ask_all(lm, "After editing: the same questions", questions, memory, max_new_tokens)
    _ask_all(lm, "Paraphrases", [e.paraphrase for e in EDITS], memory, max_new_tokens)
    _ask_all(lm, "Unrelated questions (should be unchanged)", list(UNRELATED), memory, max_new_tokens)

    _, seconds = _timed(lambda: memory.forget(ids[0]))
    print(f"\n## Forgetting {ids[0]} ({EDITS[0].fact}) took {seconds * 1e3:.1f} ms")
    _ask_all(lm, "After forgetting", [EDITS[0].question, EDITS[0].paraphrase, EDITS[1].question], memory, max_new_tokens)
