"""Natural questions: facts as people write them, asked as people ask, judged by the reply.

The benchmark file (`benchmarks/questions/questions.json`, made by its generator next to it)
holds facts, each with the answer a reply must contain and two questions worded differently
from the fact, and unrelated questions. Rows, all by generation through `Larimar.ask`:

* single: each fact written alone into a fresh memory, its question and its rephrased question.
* many: the first N facts in one memory, every one of their questions.
* unrelated: unrelated questions with every fact in memory; the reply must be identical to
  the base model's (asked without memory), which must not be empty.
* forget: with every fact written, some forgotten; their answers must be gone from the replies
  to their questions, while the facts kept are still answered.

A reply holds the answer when the answer's text occurs in it, ignoring case.

Example:
    >>> data = load_questions("benchmarks/questions/questions.json")
    >>> report = evaluate_questions(larimar.load(), data, sizes=(100,))
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..editing.larimar import Larimar


@dataclass(frozen=True)
class QuestionFact:
    """One fact and the questions about it."""

    fact: str
    answer: str
    question: str
    rephrased: str
    kind: str = ""


@dataclass(frozen=True)
class QuestionSet:
    """The benchmark: facts with their questions, and unrelated questions."""

    facts: list[QuestionFact]
    unrelated: list[str]


def load_questions(path: str | Path, limit: int | None = None) -> QuestionSet:
    """Read a question benchmark file; ValueError names what is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no question benchmark at {path}; make one with benchmarks/questions/make_questions.py")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "facts" not in data or "unrelated" not in data:
        raise ValueError(f"{path} must hold an object with 'facts' and 'unrelated' lists")
    facts = []
    for i, record in enumerate(data["facts"]):
        missing = {"fact", "answer", "question", "rephrased"} - set(record)
        if missing:
            raise ValueError(f"{path}: facts[{i}] lacks {sorted(missing)}")
        facts.append(QuestionFact(record["fact"], record["answer"], record["question"], record["rephrased"],
                                  record.get("kind", "")))
    return QuestionSet(facts[:limit] if limit else facts, list(data["unrelated"]))


def holds(reply: str, answer: str) -> bool:
    """Whether the reply contains the answer, ignoring case and runs of spaces."""
    return " ".join(answer.casefold().split()) in " ".join(reply.casefold().split())


def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def evaluate_questions(lm: Larimar, data: QuestionSet, sizes: Sequence[int] = (100,), forget: int = 50,
                       max_new_tokens: int = 40, batch_size: int = 16, examples: int = 3) -> dict[str, Any]:
    """Every row of the benchmark (see the module docstring); returns rates and examples."""
    facts = data.facts
    rows: dict[str, Any] = {}
    started = time.perf_counter()

    alone = []
    for f in facts:
        alone.append(lm.new_memory())
        alone[-1].write([f.fact])
    replies = lm.ask_many([q for f in facts for q in (f.question, f.rephrased)],
                          [m for m in alone for _ in (0, 1)], max_new_tokens, batch_size=batch_size)
    single_q = [holds(replies[2 * i].text, f.answer) for i, f in enumerate(facts)]
    single_r = [holds(replies[2 * i + 1].text, f.answer) for i, f in enumerate(facts)]
    shown = [{"fact": f.fact, "question": f.question, "reply": replies[2 * i].text, "rephrased": f.rephrased,
              "reply_rephrased": replies[2 * i + 1].text} for i, f in enumerate(facts[:examples])]
    misses = [{"fact": f.fact, "question": q, "reply": r.text}
              for i, f in enumerate(facts) for q, r in ((f.question, replies[2 * i]), (f.rephrased, replies[2 * i + 1]))
              if not holds(r.text, f.answer)]
    rows["single"] = {"facts": len(facts), "question": _rate(single_q), "rephrased": _rate(single_r), "examples": shown,
                      "misses": misses[:20]}

    full = lm.new_memory()
    ids = full.write([f.fact for f in facts])
    for n in sorted({min(s, len(facts)) for s in sizes} | {len(facts)}):
        memory = full if n == len(facts) else lm.new_memory()
        if memory is not full:
            memory.write([f.fact for f in facts[:n]])
        answers = lm.ask_many([q for f in facts[:n] for q in (f.question, f.rephrased)], memory, max_new_tokens,
                              batch_size=batch_size)
        q = [holds(answers[2 * i].text, f.answer) for i, f in enumerate(facts[:n])]
        r = [holds(answers[2 * i + 1].text, f.answer) for i, f in enumerate(facts[:n])]
        rows[f"many_{n}"] = {"facts": n, "question": _rate(q), "rephrased": _rate(r),
                             "in_scope": _rate([a.in_scope for a in answers])}

    base = lm.ask_many(data.unrelated, None, max_new_tokens, batch_size=batch_size)
    with_memory = lm.ask_many(data.unrelated, full, max_new_tokens, batch_size=batch_size)
    changed = [{"question": q, "base": b.text, "with_memory": m.text}
               for q, b, m in zip(data.unrelated, base, with_memory) if b.text != m.text]
    rows["unrelated"] = {
        "questions": len(base), "unchanged": _rate([b.text == m.text for b, m in zip(base, with_memory)]),
        "in_scope": _rate([m.in_scope for m in with_memory]), "base_not_empty": _rate([bool(b.text) for b in base]),
        "changed": changed[:examples],
    }

    n_forget = min(forget, len(facts) - 1)
    for fact_id in ids[:n_forget]:
        full.forget(fact_id)
    gone = lm.ask_many([q for f in facts[:n_forget] for q in (f.question, f.rephrased)], full, max_new_tokens,
                       batch_size=batch_size)
    kept = lm.ask_many([f.question for f in facts[n_forget:]], full, max_new_tokens, batch_size=batch_size)
    rows["forget"] = {
        "forgotten": n_forget,
        "gone": _rate([not holds(a.text, f.answer) for a, f in zip(gone, [f for f in facts[:n_forget] for _ in (0, 1)])]),
        "kept_answered": _rate([holds(a.text, f.answer) for a, f in zip(kept, facts[n_forget:])]),
    }
    rows["seconds"] = time.perf_counter() - started
    return rows


def format_questions(report: dict[str, Any]) -> str:
    """A markdown table of a report from `evaluate_questions`."""
    lines = ["| row | facts / questions | answer in reply: question | rephrased | other |", "|---|---:|---:|---:|---|"]
    single = report["single"]
    lines.append(f"| single fact | {single['facts']} | {100 * single['question']:.1f} % | {100 * single['rephrased']:.1f} % | |")
    for key, row in report.items():
        if key.startswith("many_"):
            lines.append(f"| {row['facts']} facts in one memory | {row['facts']} | {100 * row['question']:.1f} % | "
                         f"{100 * row['rephrased']:.1f} % | in scope {100 * row['in_scope']:.1f} % |")
    u = report["unrelated"]
    lines.append(f"| unrelated, every fact in memory | {u['questions']} | | | unchanged {100 * u['unchanged']:.1f} %, "
                 f"in scope {100 * u['in_scope']:.1f} %, base replies not empty {100 * u['base_not_empty']:.1f} % |")
    f = report["forget"]
    lines.append(f"| forget | {f['forgotten']} | | | answers gone {100 * f['gone']:.1f} %, "
                 f"kept facts answered {100 * f['kept_answered']:.1f} % |")
    return "\n".join(lines)


def evaluate_edits_by_ask(lm: Larimar, cases: Sequence[Any], max_new_tokens: int = 32,
                          batch_size: int = 16, sequential: bool = False, chunk: int = 64) -> dict[str, Any]:
    """Knowledge-editing cases (`larimar.eval.datasets.EditCase`, CounterFact or zsRE), asked
    through `ask` and judged by the reply (WILD-style: the reply must hold the new answer):
    rewrite (the edit's own prompt), paraphrase (its first paraphrase) and locality (a
    neighbourhood prompt's reply unchanged from the base model's).

    Each fact is written alone into its own memory (`chunk` cases' memories at a time, so a
    long run does not hold a memory per case), or with `sequential` every fact is written one
    after another into one memory and every past edit is asked once all are written."""
    started = time.perf_counter()
    shared = None
    if sequential:
        shared = lm.new_memory()
        for case in cases:
            shared.write([case.fact])
    written_s = time.perf_counter() - started
    rewrite, paraphrase, local, para_cases, local_cases = [], [], [], [], []
    step = max(1, len(cases)) if sequential else chunk  # one memory for all: one part
    for at in range(0, len(cases), step):
        part = list(cases[at : at + step])
        memories = [shared] * len(part) if shared is not None else [_alone(lm, c.fact) for c in part]
        rewrite += lm.ask_many([c.prompt for c in part], memories, max_new_tokens, batch_size=batch_size)
        para = [(c, m) for c, m in zip(part, memories) if c.paraphrase_prompts]
        paraphrase += lm.ask_many([c.paraphrase_prompts[0] for c, _ in para], [m for _, m in para],
                                  max_new_tokens, batch_size=batch_size)
        near = [(c, m) for c, m in zip(part, memories) if c.neighborhood_prompts]
        local += lm.ask_many([c.neighborhood_prompts[0].prompt for c, _ in near], [m for _, m in near],
                             max_new_tokens, batch_size=batch_size)
        para_cases += [c for c, _ in para]
        local_cases += [c for c, _ in near]
    local_prompts = [c.neighborhood_prompts[0].prompt for c in local_cases]
    base = lm.ask_many(local_prompts, None, max_new_tokens, batch_size=batch_size)
    return {
        "cases": len(cases),
        "sequential": sequential,
        "rewrite": _rate([holds(a.text, c.target_new) for a, c in zip(rewrite, cases)]),
        "paraphrase": _rate([holds(a.text, c.target_new) for a, c in zip(paraphrase, para_cases)]),
        "locality_unchanged": _rate([a.text == b.text for a, b in zip(local, base)]),
        "locality_in_scope": _rate([a.in_scope for a in local]),
        "write_seconds": written_s,
        "seconds": time.perf_counter() - started,
        "examples": [{"prompt": c.prompt, "reply": a.text, "target": c.target_new} for a, c in zip(rewrite[:3], cases)],
        "misses": [{"prompt": c.prompt, "reply": a.text, "target": c.target_new}
                   for a, c in zip(rewrite, cases) if not holds(a.text, c.target_new)][:10],
        "paraphrase_misses": [{"prompt": c.paraphrase_prompts[0], "reply": a.text, "target": c.target_new}
                              for a, c in zip(paraphrase, para_cases) if not holds(a.text, c.target_new)][:10],
        "locality_changed": [{"prompt": p, "base": b.text, "with_memory": a.text}
                             for p, a, b in zip(local_prompts, local, base) if a.text != b.text][:10],
    }


def _alone(lm: Larimar, fact: str) -> Any:
    """A fresh memory holding one fact."""
    memory = lm.new_memory()
    memory.write([fact])
    return memory
