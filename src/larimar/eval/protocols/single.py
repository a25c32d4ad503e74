"""Single-fact CounterFact (ROME, Larimar paper Table 2).

For each case: reset the editor, apply that one edit, score the rewrite / paraphrase /
neighbourhood prompts against ``target_new`` and the true answer, and greedily generate from
the rewrite prompt. One JSON line per case (``cases.jsonl``) makes runs resumable;
``summary.json``, ``table.md`` and ``config.json`` sit beside it.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor
from larimar.eval.metrics import (
    contains_match,
    exact_match,
    fluency,
    harmonic_score,
    mean,
    natural_stop,
    prob_magnitude,
    prob_success,
)
from larimar.eval.protocols.common import (
    CONFIG_FILE,
    RECORDS_FILE,
    SUMMARY_FILE,
    TABLE_FILE,
    Track,
    json_safe,
    no_progress,
    read_records,
    write_json,
)
from larimar.eval.report import summary_table

logger = logging.getLogger(__name__)


def _score_case(editor: Editor, case: EditCase) -> dict[str, list[dict[str, Any]]]:
    """Score every prompt of ``case`` against its two candidate answers in one batch."""
    if case.target_true is None:
        raise ValueError(
            f"case {case.case_id}: the single-fact protocol compares target_new with "
            "target_true, which this case lacks (for MEND zsRE load with zsre_target='alt')"
        )
    groups = {
        "rewrite": [(case.prompt, case.target_true)],
        "paraphrase": [(p, case.target_true) for p in case.paraphrase_prompts],
        "neighborhood": [(n.prompt, n.answer) for n in case.neighborhood_prompts],
    }
    prompts: list[str] = []
    conts: list[str] = []
    for items in groups.values():
        for prompt, answer in items:
            prompts += [prompt, prompt]
            conts += [case.target_new, answer]
    nlls = iter(editor.score(prompts, conts))
    return {
        name: [
            {"prompt": p, "answer": ans, "nll_new": next(nlls), "nll_true": next(nlls)}
            for p, ans in items
        ]
        for name, items in groups.items()
    }


def _generate_case(editor: Editor, case: EditCase, max_new_tokens: int) -> dict[str, Any]:
    text = editor.generate([case.prompt], max_new_tokens)[0]
    answer = natural_stop(text)
    return {
        "text": text,
        "answer": answer,
        "exact": exact_match(answer, case.target_new),
        "contains": contains_match(answer, case.target_new),
    }


def evaluate_case(
    editor: Editor, case: EditCase, max_new_tokens: int, fluency_tokens: int | None = None
) -> dict[str, Any]:
    """Reset, edit with ``case`` alone (timed), then score and generate; one JSON record."""
    editor.reset()
    start = time.perf_counter()
    editor.edit([case])
    edit_time = time.perf_counter() - start
    record: dict[str, Any] = {"case_id": case.case_id, "edit_time_s": edit_time}
    record.update(_score_case(editor, case))
    if max_new_tokens > 0:
        record["generation"] = _generate_case(editor, case, max_new_tokens)
    if fluency_tokens and case.generation_prompts:
        texts = editor.generate(case.generation_prompts, fluency_tokens)
        record["fluency"] = fluency(texts)
    return record


def _case_rates(record: Mapping[str, Any]) -> dict[str, float]:
    """Per-case success rates / magnitudes (ROME averages per case, then over cases)."""
    out: dict[str, float] = {}
    for key, group, flip in (("ES", "rewrite", False), ("PS", "paraphrase", False),
                             ("NS", "neighborhood", True)):
        new = [r["nll_new"] for r in record[group]]
        true = [r["nll_true"] for r in record[group]]
        pref, other = (true, new) if flip else (new, true)
        out[key] = prob_success(pref, other)
        out[f"{key}_mag"] = prob_magnitude(pref, other)
    return out


def summarize_single_fact(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate per-case records into ROME metrics (%), generation match (%) and timing (s)."""
    rates = [_case_rates(r) for r in records]
    summary: dict[str, Any] = {"n_cases": len(records)}
    for key in ("ES", "PS", "NS", "ES_mag", "PS_mag", "NS_mag"):
        summary[key] = mean(r[key] for r in rates)
    summary["S"] = harmonic_score(summary["ES"], summary["PS"], summary["NS"])
    gens = [r["generation"] for r in records if "generation" in r]
    summary["gen_exact"] = 100.0 * mean(float(g["exact"]) for g in gens)
    summary["gen_contains"] = 100.0 * mean(float(g["contains"]) for g in gens)
    summary["fluency"] = mean(r["fluency"] for r in records if "fluency" in r)
    times = [r["edit_time_s"] for r in records]
    summary["edit_time_s_mean"] = mean(times)
    summary["edit_time_s_median"] = statistics.median(times) if times else math.nan
    return summary


def run_single_fact(
    editor: Editor,
    cases: Sequence[EditCase],
    out_dir: str | Path,
    *,
    max_new_tokens: int = 20,
    fluency_tokens: int | None = None,
    run_config: Mapping[str, Any] | None = None,
    track: Track[Any] = no_progress,
) -> dict[str, Any]:
    """Run the single-fact CounterFact protocol; resumes from ``out_dir/cases.jsonl``.

    Args:
        editor: any registered editor.
        cases: cases with ``target_true`` (CounterFact, or zsRE with ``zsre_target="alt"``).
        out_dir: folder for ``cases.jsonl``, ``summary.json`` and ``config.json``.
        max_new_tokens: greedy tokens generated from each rewrite prompt (0 to skip).
        fluency_tokens: when set, also generate this many tokens from each generation prompt
            and report ROME's n-gram-entropy fluency (costly; the paper uses 100).
        run_config: extra settings saved in ``config.json`` (dataset path, options, ...).
        track: wraps the loop over cases (a progress bar in the CLI).

    Returns:
        The summary (also written to ``summary.json``, as a table to ``table.md``), over the
        given cases only.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"protocol": "single_fact", "editor": editor.config(), "n_cases": len(cases),
              "max_new_tokens": max_new_tokens, "fluency_tokens": fluency_tokens,
              **(run_config or {})}
    write_json(out / CONFIG_FILE, config)
    path = out / RECORDS_FILE
    done = read_records(path)
    todo = [c for c in cases if c.case_id not in done]
    logger.info(
        "single-fact %s: %d cases, %d already done", editor.name, len(cases), len(cases) - len(todo)
    )
    with path.open("a", encoding="utf-8") as fh:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            fh.write("\n")  # close a torn last line so the next record starts cleanly
        for i, case in enumerate(track(todo, "single", len(todo)), 1):
            record = evaluate_case(editor, case, max_new_tokens, fluency_tokens)
            fh.write(json.dumps(json_safe(record)) + "\n")
            fh.flush()
            done[case.case_id] = record
            if i % 10 == 0 or i == len(todo):
                logger.info("single-fact %s: %d/%d cases", editor.name, i, len(todo))
    editor.reset()
    summary = {"editor": editor.name,
               **summarize_single_fact([done[c.case_id] for c in cases])}
    write_json(out / SUMMARY_FILE, summary)
    (out / TABLE_FILE).write_text(summary_table([summary]), encoding="utf-8")
    return summary

