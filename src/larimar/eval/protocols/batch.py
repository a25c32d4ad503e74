"""Batch capacity: write N facts in one ``edit`` call, accuracy over them against N."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor
from larimar.eval.protocols.common import (
    RECORDS_FILE,
    Track,
    append_record,
    checked_sizes,
    finish,
    no_progress,
    open_append,
    plot,
    prepare_out,
    probe,
    read_records,
    recall_summary,
    rows_table,
    subset,
)

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 16, 64, 256, 1024, 4096)
BATCH_COLUMNS = ("n", "n_eval", "ES", "gen_exact", "gen_contains", "gen_f1", "edit_time_s")


def _batch_key(rec: Mapping[str, Any]) -> str:
    return f"{rec['n']}/{rec['case_id']}"


def run_batch(
    editor: Editor,
    cases: Sequence[EditCase],
    out_dir: str | Path,
    *,
    sizes: Sequence[int] = BATCH_SIZES,
    max_eval: int | None = None,
    max_new_tokens: int = 20,
    seed: int = 0,
    run_config: Mapping[str, Any] | None = None,
    track: Track[Any] = no_progress,
) -> dict[str, Any]:
    """Batch capacity: for each N, reset, write the first N facts in one ``edit`` call, and
    measure rewrite success (ES) and greedy generation match over them.

    Args:
        sizes: the N values; those above ``len(cases)`` are dropped.
        max_eval: evaluate at most this many of the N written facts (drawn with ``seed``).
        (the rest as in :func:`run_single_fact`)

    Returns:
        ``{"protocol": "batch", "editor", "rows": [per-N metrics]}``; files: ``cases.jsonl``
        (one line per N and evaluated case; an N whose cases are all there is not re-run),
        ``summary.json``, ``table.md``, ``config.json``, ``batch.png``.
    """
    ns = checked_sizes(sizes, len(cases), "batch")
    out = prepare_out(out_dir, {"protocol": "batch", "editor": editor.config(), "sizes": ns,
                                 "max_eval": max_eval, "max_new_tokens": max_new_tokens,
                                 "seed": seed, "n_cases": len(cases), **(run_config or {})})
    path = out / RECORDS_FILE
    done = read_records(path, _batch_key)
    rows = []
    with open_append(path) as fh:
        for n in track(ns, "batch", len(ns)):
            evaluated = subset(cases[:n], max_eval, seed + n)
            recs = [done.get(f"{n}/{c.case_id}") for c in evaluated]
            if any(r is None for r in recs):
                recs = _batch_step(editor, cases[:n], evaluated, max_new_tokens)
                for rec in recs:
                    append_record(fh, rec)
            rows.append({"n": n, "n_eval": len(recs), **recall_summary(recs),  # type: ignore[arg-type]
                         "edit_time_s": recs[0]["edit_time_s"]})  # type: ignore[index]
            logger.info("batch %s: N=%d gen_exact %.1f", editor.name, n, rows[-1]["gen_exact"])
    editor.reset()
    plot(out, "batch", rows, "n", ["ES", "gen_exact", "gen_contains"],
          f"batch capacity ({editor.name})")
    summary = {"protocol": "batch", "editor": editor.name, "rows": rows}
    return finish(out, summary, rows_table(summary, BATCH_COLUMNS))


def _batch_step(editor: Editor, written: Sequence[EditCase], evaluated: Sequence[EditCase],
                max_new_tokens: int) -> list[dict[str, Any]]:
    editor.reset()
    start = time.perf_counter()
    editor.edit(written)
    elapsed = time.perf_counter() - start
    recs = probe(editor, evaluated, [c.prompt for c in evaluated], max_new_tokens)
    return [{"n": len(written), "edit_time_s": elapsed, **r} for r in recs]
