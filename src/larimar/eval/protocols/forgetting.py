"""Selective forgetting: write N facts, forget some, optionally rewrite them as "unknown";
recall of the forgotten facts against the retained ones."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor
from larimar.eval.metrics import contains_match
from larimar.eval.protocols.common import (
    RECORDS_FILE,
    Track,
    append_record,
    checked_sizes,
    finish,
    no_progress,
    not_supported,
    open_append,
    pct,
    plot,
    prepare_out,
    probe,
    read_records,
    recall_summary,
    rows_table,
    subset,
    unknown_case,
)

logger = logging.getLogger(__name__)

FORGET_SIZES = (64,)
FORGETTING_COLUMNS = ("n", "n_forgotten", "forgotten_before_gen_contains", "forgotten_gen_exact",
                      "forgotten_gen_contains", "forgotten_ES", "retained_gen_exact",
                      "retained_gen_contains", "retained_ES", "unknown_rate")


def _forget_key(rec: Mapping[str, Any]) -> str:
    return f"{rec['n']}/{rec['role']}/{rec['case_id']}"


def run_forgetting(
    editor: Editor,
    cases: Sequence[EditCase],
    out_dir: str | Path,
    *,
    sizes: Sequence[int] = FORGET_SIZES,
    n_forget: int = 1,
    rewrite_unknown: bool = False,
    max_eval: int | None = None,
    max_new_tokens: int = 20,
    seed: int = 0,
    run_config: Mapping[str, Any] | None = None,
    track: Track[Any] = no_progress,
) -> dict[str, Any]:
    """Selective forgetting: for each N, write the first N facts in one ``edit`` call, forget
    ``n_forget`` of them (drawn with ``seed``), optionally rewrite those as "prompt + unknown",
    and compare recall of the forgotten facts (before and after) with the retained ones.

    Recall is greedy generation exact / contains match of ``target_new`` and ES
    (``target_new`` likelier than ``target_true``); ``unknown_rate`` is the % of forgotten
    facts whose greedy answer contains "unknown". An editor that cannot forget is reported as
    not supported (``supported: false``) instead of failing the run.

    Args:
        max_eval: evaluate at most this many retained facts (drawn with ``seed``).
        (the rest as in :func:`run_batch`)

    Returns:
        ``{"protocol": "forgetting", "editor", "rows": [per-N metrics]}``; files as for
        :func:`run_batch` (``cases.jsonl`` lines carry a ``role``: ``forgotten_before``,
        ``forgotten`` or ``retained``), and ``forgetting.png`` for several N.
    """
    ns = checked_sizes(sizes, len(cases), "forgetting")
    if n_forget < 1:
        raise ValueError(f"n_forget must be at least 1; got {n_forget}")
    out = prepare_out(out_dir, {"protocol": "forgetting", "editor": editor.config(), "sizes": ns,
                                 "n_forget": n_forget, "rewrite_unknown": rewrite_unknown,
                                 "max_eval": max_eval, "max_new_tokens": max_new_tokens,
                                 "seed": seed, "n_cases": len(cases), **(run_config or {})})
    summary: dict[str, Any] = {"protocol": "forgetting", "editor": editor.name,
                               "rewrite_unknown": rewrite_unknown}
    path = out / RECORDS_FILE
    done = read_records(path, _forget_key)
    rows = []
    try:
        editor.reset()
        editor.forget([])  # editors that cannot forget say so before any work is done
        with open_append(path) as fh:
            for n in track(ns, "forgetting", len(ns)):
                recs = _forget_step_cached(editor, cases[:n], done, fh, n_forget,
                                           rewrite_unknown, max_eval, max_new_tokens, seed + n)
                rows.append(_forget_row(n, recs))
    except NotImplementedError as err:
        editor.reset()
        unsupported = not_supported(summary, err)
        return finish(out, unsupported, rows_table(unsupported, FORGETTING_COLUMNS))
    editor.reset()
    plot(out, "forgetting", rows, "n",
          ["forgotten_gen_contains", "retained_gen_contains"], f"forgetting ({editor.name})")
    summary.update(supported=True, rows=rows)
    return finish(out, summary, rows_table(summary, FORGETTING_COLUMNS))


def _forget_plan(written: Sequence[EditCase], n_forget: int, max_eval: int | None,
                 seed: int) -> tuple[list[EditCase], list[EditCase]]:
    """The facts to forget and the retained facts to evaluate, both drawn with ``seed``."""
    picked = set(random.Random(seed).sample(range(len(written)), min(n_forget, len(written))))
    forgotten = [c for i, c in enumerate(written) if i in picked]
    retained = [c for i, c in enumerate(written) if i not in picked]
    return forgotten, subset(retained, max_eval, seed + 1)


def _forget_step_cached(editor: Editor, written: Sequence[EditCase],
                        done: Mapping[str, Mapping[str, Any]], fh: TextIO, n_forget: int,
                        rewrite_unknown: bool, max_eval: int | None, max_new_tokens: int,
                        seed: int) -> list[dict[str, Any]]:
    """One N's records: from ``done`` when complete, else run and append them."""
    forgotten, retained = _forget_plan(written, n_forget, max_eval, seed)
    n = len(written)
    keys = ([f"{n}/forgotten_before/{c.case_id}" for c in forgotten]
            + [f"{n}/forgotten/{c.case_id}" for c in forgotten]
            + [f"{n}/retained/{c.case_id}" for c in retained])
    if all(k in done for k in keys):
        return [dict(done[k]) for k in keys]
    recs = _forget_step(editor, written, forgotten, retained, rewrite_unknown, max_new_tokens)
    for rec in recs:
        append_record(fh, rec)
    return recs


def _forget_step(editor: Editor, written: Sequence[EditCase], forgotten: Sequence[EditCase],
                 retained: Sequence[EditCase], rewrite_unknown: bool,
                 max_new_tokens: int) -> list[dict[str, Any]]:
    editor.reset()
    editor.edit(written)
    prompts = [c.prompt for c in forgotten]
    before = probe(editor, forgotten, prompts, max_new_tokens)
    start = time.perf_counter()
    editor.forget([c.case_id for c in forgotten])  # NotImplementedError: not supported
    forget_time = time.perf_counter() - start
    if rewrite_unknown:
        editor.edit([unknown_case(c) for c in forgotten])
    after = probe(editor, forgotten, prompts, max_new_tokens)
    kept = probe(editor, retained, [c.prompt for c in retained], max_new_tokens)
    tag = {"n": len(written), "forget_time_s": forget_time}
    return ([{**tag, "role": "forgotten_before", **r} for r in before]
            + [{**tag, "role": "forgotten", **r} for r in after]
            + [{**tag, "role": "retained", **r} for r in kept])


def _forget_row(n: int, recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def of(role: str) -> list[Mapping[str, Any]]:
        return [r for r in recs if r["role"] == role]

    forgotten = of("forgotten")
    return {
        "n": n, "n_forgotten": len(forgotten), "n_retained_eval": len(of("retained")),
        **recall_summary(of("forgotten_before"), "forgotten_before_"),
        **recall_summary(forgotten, "forgotten_"),
        **recall_summary(of("retained"), "retained_"),
        "unknown_rate": pct(contains_match(r.get("answer", ""), "unknown") for r in forgotten),
        "forget_time_s": recs[0]["forget_time_s"] if recs else math.nan,
    }
