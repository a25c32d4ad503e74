"""Batch capacity: write N facts in one ``edit`` call; rewrite, paraphrase and locality
accuracy over them against N."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor
from larimar.eval.protocols.common import (
    BASELINE_FILE,
    RECORDS_FILE,
    Track,
    append_record,
    checked_sizes,
    finish,
    locality_baseline,
    locality_items,
    locality_probe,
    mark_unchanged,
    no_progress,
    open_append,
    pct,
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
BATCH_COLUMNS = ("n", "n_eval", "ES", "gen_exact", "gen_contains", "PS", "para_gen_exact", "para_gen_contains",
                 "loc_unchanged", "gen_exact_alone", "para_gen_exact_alone", "gen_pct_of_alone", "para_pct_of_alone",
                 "edit_time_s")


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
    filler: Sequence[EditCase] = (),
    alone: bool = False,
    run_config: Mapping[str, Any] | None = None,
    track: Track[Any] = no_progress,
) -> dict[str, Any]:
    """Batch capacity: for each N, reset, write the first N facts in one ``edit`` call, and
    measure over the ``cases`` among them rewrite success (ES) and greedy generation match,
    the same on each case's first paraphrase (PS, ``para_gen_*``; paraphrases are never
    written), and ``loc_unchanged``: % of their first locality prompts whose greedy answer is
    the unedited editor's.

    Args:
        sizes: the N values; those above ``len(cases) + len(filler)`` are dropped.
        max_eval: evaluate at most this many of the written ``cases`` (drawn with ``seed``).
        filler: facts written after ``cases`` once N exceeds them, never asked (e.g. CounterFact
            train facts filling a memory whose asked facts are held out).
        alone: also write each evaluated case alone and add, per N, the same case's rewrite
            and paraphrase generation written alone (``*_alone``) and the N-fact rates as % of
            those (``gen_pct_of_alone``, ``para_pct_of_alone``).
        (the rest as in :func:`run_single_fact`)

    Returns:
        ``{"protocol": "batch", "editor", "rows": [per-N metrics]}``; files: ``cases.jsonl``
        (one line per N and evaluated case; an N whose cases are all there is not re-run),
        ``locality_baseline.jsonl``, ``summary.json``, ``table.md``, ``config.json``, ``batch.png``.
    """
    pool = [*cases, *filler]
    ns = checked_sizes(sizes, len(pool), "batch")
    out = prepare_out(out_dir, {"protocol": "batch", "editor": editor.config(), "sizes": ns,
                                 "max_eval": max_eval, "max_new_tokens": max_new_tokens,
                                 "seed": seed, "n_cases": len(cases), "n_filler": len(filler),
                                 "alone": alone, **(run_config or {})})
    path = out / RECORDS_FILE
    done = read_records(path, _batch_key)
    rows = []
    with open_append(path) as fh:
        for n in track(ns, "batch", len(ns)):
            evaluated = subset(cases[:n], max_eval, seed + n)
            recs = [done.get(f"{n}/{c.case_id}") for c in evaluated]
            if any(r is None or "paraphrase" not in r for r in recs):
                loc = locality_items(evaluated, 1)
                baseline = locality_baseline(editor, loc, out / BASELINE_FILE, max_new_tokens)
                recs = _batch_step(editor, pool[:n], evaluated, loc, baseline, max_new_tokens)
                for rec in recs:
                    append_record(fh, rec)
            rows.append(_row(n, recs))  # type: ignore[arg-type]
            if alone:
                rows[-1].update(_alone_columns(editor, rows[-1], evaluated, done, fh, out, max_new_tokens))
            logger.info("batch %s: N=%d gen_exact %.1f", editor.name, n, rows[-1]["gen_exact"])
    editor.reset()
    plot(out, "batch", rows, "n", ["ES", "gen_exact", "PS", "para_gen_exact", "loc_unchanged"],
          f"batch capacity ({editor.name})")
    summary = {"protocol": "batch", "editor": editor.name, "rows": rows}
    return finish(out, summary, rows_table(summary, BATCH_COLUMNS))


def _row(n: int, recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One size's metrics: rewrite, first paraphrase and locality over its evaluated cases."""
    para = recall_summary([r["paraphrase"] for r in recs if r["paraphrase"] is not None])
    loc = [x for r in recs for x in r["locality"]]
    return {"n": n, "n_eval": len(recs), **recall_summary(recs), "PS": para.pop("ES"),
            **{f"para_{k}": v for k, v in para.items()},
            "loc_unchanged": pct(x["unchanged"] for x in loc), "edit_time_s": recs[0]["edit_time_s"]}


def _alone_columns(editor: Editor, row: Mapping[str, Any], evaluated: Sequence[EditCase], done: dict[str, Any],
                   fh: Any, out: Path, max_new_tokens: int) -> dict[str, float]:
    """Rewrite and paraphrase generation exact match of a size's cases, each written alone
    (records keyed ``alone/ID``, written once and shared between sizes), and the size's rates
    as % of them."""
    todo = [c for c in evaluated if f"alone/{c.case_id}" not in done]
    loc = locality_items(todo, 1)
    baseline = locality_baseline(editor, loc, out / BASELINE_FILE, max_new_tokens) if todo else {}
    for case in todo:
        [rec] = _batch_step(editor, [case], [case], [x for x in loc if x["case_id"] == case.case_id], baseline,
                            max_new_tokens)
        rec["n"] = "alone"
        append_record(fh, rec)
        done[f"alone/{case.case_id}"] = rec
    ref = _row(1, [done[f"alone/{c.case_id}"] for c in evaluated])
    return {"gen_exact_alone": ref["gen_exact"], "para_gen_exact_alone": ref["para_gen_exact"],
            "gen_pct_of_alone": _percent_of(row["gen_exact"], ref["gen_exact"]),
            "para_pct_of_alone": _percent_of(row["para_gen_exact"], ref["para_gen_exact"])}


def _percent_of(value: float, reference: float) -> float:
    return 100.0 * value / reference if reference else float("nan")


def _batch_step(editor: Editor, written: Sequence[EditCase], evaluated: Sequence[EditCase],
                loc: Sequence[Mapping[str, str]], baseline: Mapping[str, Mapping[str, Any]],
                max_new_tokens: int) -> list[dict[str, Any]]:
    """Reset, write ``written`` in one call, and probe ``evaluated``: rewrite, first paraphrase
    (never written) and locality prompts against the unedited ``baseline``."""
    editor.reset()
    start = time.perf_counter()
    editor.edit(written)
    elapsed = time.perf_counter() - start
    recs = probe(editor, evaluated, [c.prompt for c in evaluated], max_new_tokens)
    with_para = [c for c in evaluated if c.paraphrase_prompts]
    para = {p["case_id"]: p for p in probe(editor, with_para, [c.paraphrase_prompts[0] for c in with_para],
                                            max_new_tokens)}
    probes = locality_probe(editor, loc, max_new_tokens)
    mark_unchanged(probes, baseline)
    return [{"n": len(written), "edit_time_s": elapsed, **r, "paraphrase": para.get(r["case_id"]),
             "locality": [x for x in probes if x["case_id"] == r["case_id"]]} for r in recs]
