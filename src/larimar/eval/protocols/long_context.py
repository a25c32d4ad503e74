"""Long-context fact recall: a context generator from CounterFact and a side-by-side protocol.

A context is n counterfactual facts ``"prompt target_new."`` drawn from CounterFact (so no
model can know them), and one question: the rewrite prompt of one of them, whose answer is its
``target_new``. Every method answers by greedy generation; recall is exact / contains match
of the generation cut at its natural stop. Methods (one function each, in `METHODS`):

* ``in_prompt``: the base decoder with every fact in its prompt, then the question; skipped
  when the prompt does not fit the decoder's context window.
* ``flat``: all n facts in one memory, read once with the question, decode.
* ``recursive``: the recursive memory search of `larimar.editing.longcontext`.

Example:
    >>> contexts = make_contexts(load_cases("counterfact-train.json"), sizes=(16, 64), questions=10)
    >>> rows = run_benchmark(larimar.load(path), contexts)
    >>> print(summary_markdown(summarize(rows)))
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ...editing.larimar import Larimar
from ...editing.longcontext import SearchConfig, decode, encode_context, flat_read, recursive_search
from ...model.text import generate
from ..datasets import EditCase
from ..metrics import contains_match, exact_match, mean, natural_stop

logger = logging.getLogger(__name__)

SIZES = (16, 64, 128, 256, 512, 1024)
"""Context sizes (facts) of the benchmark."""


@dataclass(frozen=True)
class LongContextCase:
    """One context of n facts and one question about one of them."""

    id: str
    """``"n{n}-q{i}"``."""
    facts: list[str]
    """(n,) sentences ``"prompt target_new."``."""
    question: str
    """The rewrite prompt of fact `target_index`."""
    answer: str
    """Its target_new."""
    target_index: int
    """Position of the asked fact in `facts`."""
    seed: int
    """Seed of the generator that drew it."""

    @property
    def n(self) -> int:
        """Number of facts."""
        return len(self.facts)


# --------------------------------------------------------------------------------- generator
def _usable(cases: Sequence[EditCase]) -> list[EditCase]:
    """One case per prompt (a question must have one answer), prompts and targets non-empty."""
    seen: set[str] = set()
    out = []
    for case in cases:
        key = case.prompt.strip().lower()
        if key and case.target_new.strip() and key not in seen:
            seen.add(key)
            out.append(case)
    return out


def make_context(cases: Sequence[EditCase], n: int, index: int, seed: int = 0) -> LongContextCase:
    """Context `index` of size n: n distinct facts in random order, one of them asked.

    Deterministic in (cases, n, index, seed): the generator is seeded with all four.
    """
    usable = _usable(cases)
    if n < 1 or n > len(usable):
        raise ValueError(f"context size must be in [1, {len(usable)}] (distinct prompts available); got {n}")
    rng = random.Random(f"longcontext-{seed}-{n}-{index}")
    drawn = rng.sample(usable, n)
    target = rng.randrange(n)
    facts = [f"{c.prompt} {c.target_new}." for c in drawn]
    return LongContextCase(f"n{n}-q{index}", facts, drawn[target].prompt, drawn[target].target_new, target, seed)


def make_contexts(cases: Sequence[EditCase], sizes: Iterable[int] = SIZES, questions: int = 10,
                  seed: int = 0) -> list[LongContextCase]:
    """`questions` contexts per size, each with its own facts and one question."""
    if questions < 1:
        raise ValueError(f"questions must be >= 1; got {questions}")
    return [make_context(cases, n, i, seed) for n in sizes for i in range(questions)]


def save_contexts(contexts: Iterable[LongContextCase], path: str | Path) -> Path:
    """Write contexts as JSONL, one per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for c in contexts:
            f.write(json.dumps(asdict(c)) + "\n")
    return path


def load_contexts(path: str | Path) -> list[LongContextCase]:
    """Read contexts written by `save_contexts`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no contexts file at {path}")
    return [LongContextCase(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class MethodOutput:
    """A method's raw generation and what it knows about its own search."""

    text: str | None
    """The generation; None when the method was skipped."""
    retrieved: bool | None = None
    """Recursive search: whether the top-ranked sentence was the asked fact."""
    note: str = ""
    """Why it was skipped, or other remarks."""


@dataclass(frozen=True)
class BenchConfig:
    """Settings shared by every method."""

    search: SearchConfig = SearchConfig()
    """Fan-out, keep, scoring of the recursive search."""
    max_new_tokens: int = 20
    """Tokens generated per answer."""
    max_prompt_facts: int | None = None
    """in_prompt: skip contexts of more facts than this (CPU time); None: as the window allows."""


Method = Callable[[Larimar, LongContextCase, BenchConfig], MethodOutput]


def context_window(lm: Larimar) -> int:
    """Positions the decoder can attend to (``max_position_embeddings``)."""
    return int(lm.model.decoder.decoder.config.max_position_embeddings)


def in_prompt_text(case: LongContextCase) -> str:
    """The facts, one per line, then the question."""
    return "\n".join(case.facts) + "\n" + case.question


def run_in_prompt(lm: Larimar, case: LongContextCase, cfg: BenchConfig) -> MethodOutput:
    """The base decoder (no memory) with every fact in its prompt."""
    if cfg.max_prompt_facts is not None and case.n > cfg.max_prompt_facts:
        return MethodOutput(None, note=f"skipped: more than {cfg.max_prompt_facts} facts (--max-prompt-facts)")
    prompt = in_prompt_text(case)
    tokens = len(lm.tokenizer(prompt)["input_ids"])
    window = context_window(lm)
    if tokens + cfg.max_new_tokens > window:
        return MethodOutput(None, note=f"skipped: prompt of {tokens} tokens exceeds the {window}-position window")
    [text] = generate(lm.model.decoder, lm.tokenizer, [prompt], z=None, max_new_tokens=cfg.max_new_tokens)
    return MethodOutput(text, note=f"{tokens} prompt tokens")


def run_flat(lm: Larimar, case: LongContextCase, cfg: BenchConfig) -> MethodOutput:
    """All facts in one memory, read once with the question."""
    latents, query = encode_context(lm.model, case.question, case.facts)
    z = flat_read(lm.model.memory, latents, query)
    return MethodOutput(decode(lm.model, case.question, z, cfg.max_new_tokens))


def run_recursive(lm: Larimar, case: LongContextCase, cfg: BenchConfig) -> MethodOutput:
    """Recursive memory search (fan-out and keep from `cfg.search`)."""
    latents, query = encode_context(lm.model, case.question, case.facts)
    result = recursive_search(lm.model.memory, latents, query, cfg.search)
    text = decode(lm.model, case.question, result.z, cfg.max_new_tokens)
    return MethodOutput(text, retrieved=result.best == case.target_index, note=f"{len(result.levels)} levels")


METHODS: dict[str, Method] = {"in_prompt": run_in_prompt, "flat": run_flat, "recursive": run_recursive}
"""Method name -> function answering one case."""


# --------------------------------------------------------------------------------- protocol
def score_case(case: LongContextCase, method: str, out: MethodOutput, seconds: float) -> dict[str, Any]:
    """One result row: prediction, exact / contains match, time, retrieval and notes."""
    row: dict[str, Any] = {"id": case.id, "n": case.n, "method": method, "question": case.question,
                           "answer": case.answer, "seconds": seconds, "note": out.note,
                           "retrieved": out.retrieved, "skipped": out.text is None}
    if out.text is not None:
        pred = natural_stop(out.text)
        row.update(generation=out.text, prediction=pred, exact=exact_match(pred, case.answer),
                   contains=contains_match(pred, case.answer))
    return row


@torch.no_grad()
def run_benchmark(lm: Larimar, contexts: Sequence[LongContextCase], methods: Sequence[str] = tuple(METHODS),
                  config: BenchConfig | None = None,
                  track: Callable[[Iterable[Any]], Iterable[Any]] = lambda x: x,
                  done: Iterable[tuple[str, str]] = (),
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Answer every context with every method; one row per (context, method).

    Args:
        track: wraps the iteration (e.g. a progress bar).
        done: (context id, method) pairs answered by an earlier run; skipped (resume).
        on_row: called with each new row as soon as it is scored (e.g. to append it to a file).

    Returns:
        The new rows only.
    """
    config = config or BenchConfig()
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    skip = set(done)
    rows = []
    for case in track(contexts):
        for method in methods:
            if (case.id, method) in skip:
                continue
            start = time.perf_counter()
            out = METHODS[method](lm, case, config)
            row = score_case(case, method, out, time.perf_counter() - start)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by `write_outputs` or appended during a run (a torn last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no rows file at {path}; run the benchmark with --out pointing there first")
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # interrupted while writing the last row
                break
            raise ValueError(f"{path}, line {i + 1}: not a JSON row") from None
    return rows


def merge_rows(*row_sets: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of several runs (shards by method or size) as one list; a (context, method) pair seen
    twice must come from the same context and question, and the first row kept."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in row_sets:
        for row in rows:
            key = (row["id"], row["method"])
            if key in merged:
                if (merged[key]["question"], merged[key]["n"]) != (row["question"], row["n"]):
                    raise ValueError(f"runs disagree on context {row['id']!r}: built with different data or seed")
                continue
            merged[key] = row
    return list(merged.values())


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (n, method): recall (exact, contains), retrieval hit rate, seconds/question."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["n"], row["method"]), []).append(row)
    out = []
    for (n, method), group in sorted(groups.items(), key=lambda kv: (kv[0][0], list(METHODS).index(kv[0][1]))):
        ran = [r for r in group if not r["skipped"]]
        out.append({
            "n": n, "method": method, "questions": len(group), "answered": len(ran),
            "recall_exact": mean(float(r["exact"]) for r in ran),
            "recall_contains": mean(float(r["contains"]) for r in ran),
            "retrieval": mean(float(r["retrieved"]) for r in ran if r["retrieved"] is not None),
            "seconds": mean(r["seconds"] for r in ran),
            "note": next((r["note"] for r in group if r["skipped"]), ""),
        })
    return out


def summary_markdown(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a markdown table (``-`` for not measured)."""
    cols = ["n", "method", "answered", "recall_exact", "recall_contains", "retrieval", "seconds", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in summary:
        lines.append("| " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.2f}"
    return str(value) if value not in (None, "") else "-"


def plot_summary(summary: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Recall (exact) and seconds per question against n, one curve per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for method in METHODS:
            pts = [r for r in summary if r["method"] == method and r["answered"]]
            if not pts:
                continue
            for ax, key in zip(axes, ("recall_exact", "seconds")):
                ax.plot([r["n"] for r in pts], [r[key] for r in pts], marker="o", label=method)
        for ax, label in zip(axes, ("recall (exact match)", "seconds per question")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("facts in context (n)")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend()
        axes[1].set_yscale("log")
        path = Path(path)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def write_outputs(rows: Sequence[dict[str, Any]], out_dir: str | Path, meta: dict[str, Any]) -> dict[str, Path]:
    """rows.jsonl, summary.json (with `meta`), summary.md and recall.png under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps({**meta, "rows": summary}, indent=2), encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return {"rows": out / "rows.jsonl", "summary": out / "summary.json", "markdown": out / "summary.md",
            "plot": plot_summary(summary, out / "recall.png")}
