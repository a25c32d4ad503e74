"""Sequential editing: a stream of edits, evaluated on all past edits at checkpoints, on
held-out paraphrases, and on unrelated (locality) prompts against the unedited model."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor
from larimar.eval.metrics import mean
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
)

logger = logging.getLogger(__name__)

CHECKPOINTS = (1, 10, 100, 1000)
SEQUENTIAL_COLUMNS = ("n_edits", "ES", "gen_exact", "gen_f1", "PS", "para_gen_exact",
                      "para_gen_f1", "loc_unchanged", "loc_nll_delta", "edit_time_s_mean")
CHECKPOINTS_FILE = "checkpoints.jsonl"


def _checkpoint_eval(editor: Editor, past: Sequence[EditCase], loc_items: Sequence[Mapping[str, str]],
                     baseline: Mapping[str, Mapping[str, Any]],
                     max_new_tokens: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-case records and metrics over all past edits at one checkpoint."""
    rewrite = probe(editor, past, [c.prompt for c in past], max_new_tokens)
    with_para = [c for c in past if c.paraphrase_prompts]
    para = probe(editor, with_para, [c.paraphrase_prompts[0] for c in with_para], max_new_tokens)
    loc = locality_probe(editor, loc_items, max_new_tokens)
    mark_unchanged(loc, baseline)
    para_metrics = recall_summary(para)
    metrics = {**recall_summary(rewrite), "PS": para_metrics.pop("ES"),
               **{f"para_{k}": v for k, v in para_metrics.items()},
               "loc_unchanged": pct(r["unchanged"] for r in loc),
               "loc_nll_delta": mean(r["nll"] - r["nll_before"] for r in loc)}
    records = [{"case_id": c.case_id, "rewrite": r,
                "paraphrase": next((p for p in para if p["case_id"] == c.case_id), None),
                "locality": [x for x in loc if x["case_id"] == c.case_id]}
               for c, r in zip(past, rewrite)]
    return records, metrics


def run_sequential(
    editor: Editor,
    cases: Sequence[EditCase],
    out_dir: str | Path,
    *,
    checkpoints: Sequence[int] = CHECKPOINTS,
    locality_per_case: int = 1,
    max_new_tokens: int = 20,
    run_config: Mapping[str, Any] | None = None,
    track: Track[Any] = no_progress,
) -> dict[str, Any]:
    """Sequential editing: apply ``cases`` one ``edit`` call at a time; at each checkpoint
    (the given ones up to ``len(cases)``, and after the last edit) evaluate all past edits.

    Metrics at a checkpoint over the past edits: ES / gen exact / contains / token F1 on the
    rewrite prompts; PS and the same generation metrics on each case's first paraphrase
    (rephrase) prompt, never written; on up to ``locality_per_case`` locality prompts per past
    edit, ``loc_unchanged`` (% greedy answers equal to the unedited model's) and
    ``loc_nll_delta`` (mean change of the locality answer's NLL, nats).

    Resuming: finished checkpoints (``checkpoints.jsonl``) are not re-evaluated; their edits
    are re-applied (editor state is not saved) before the stream continues.

    Returns:
        ``{"protocol": "sequential", "editor", "n_edits", "rows": [per checkpoint], **last}``;
        files: ``checkpoints.jsonl``, ``cases.jsonl`` (per checkpoint and case, with texts),
        ``locality_baseline.jsonl``, ``summary.json``, ``table.md``, ``config.json``,
        ``sequential.png``.
    """
    n = len(cases)
    cps = checked_sizes([*checkpoints, n], n, "sequential")
    out = prepare_out(out_dir, {"protocol": "sequential", "editor": editor.config(),
                                 "n_edits": n, "checkpoints": cps,
                                 "locality_per_case": locality_per_case,
                                 "max_new_tokens": max_new_tokens, **(run_config or {})})
    loc_items = locality_items(cases, locality_per_case)
    baseline = locality_baseline(editor, loc_items, out / BASELINE_FILE, max_new_tokens)
    done = read_records(out / CHECKPOINTS_FILE, lambda r: str(r["n_edits"]))
    rows = _stream(editor, cases, cps, done, loc_items, baseline, out, max_new_tokens, track)
    editor.reset()
    plot(out, "sequential", rows, "n_edits",
          ["ES", "gen_exact", "gen_f1", "para_gen_exact", "loc_unchanged"],
          f"sequential edits ({editor.name})")
    summary = {"protocol": "sequential", "editor": editor.name, "n_edits": n, **rows[-1],
               "rows": rows}
    return finish(out, summary, rows_table(summary, SEQUENTIAL_COLUMNS))


def _stream(editor: Editor, cases: Sequence[EditCase], cps: Sequence[int],
            done: Mapping[str, Mapping[str, Any]], loc_items: Sequence[Mapping[str, str]],
            baseline: Mapping[str, Mapping[str, Any]], out: Path, max_new_tokens: int,
            track: Track[Any]) -> list[dict[str, Any]]:
    """Apply the edits one by one, evaluating at each unfinished checkpoint."""
    if all(str(k) in done for k in cps):
        return [dict(done[str(k)]) for k in cps]
    editor.reset()
    rows: list[dict[str, Any]] = []
    edit_times: list[float] = []
    with open_append(out / CHECKPOINTS_FILE) as cp_fh, open_append(out / RECORDS_FILE) as fh:
        for k, case in enumerate(track(cases, "sequential", len(cases)), 1):
            start = time.perf_counter()
            editor.edit([case])
            edit_times.append(time.perf_counter() - start)
            if k not in cps:
                continue
            if str(k) in done:
                rows.append(dict(done[str(k)]))
                continue
            ids = {c.case_id for c in cases[:k]}
            records, metrics = _checkpoint_eval(
                editor, cases[:k], [it for it in loc_items if it["case_id"] in ids],
                baseline, max_new_tokens)
            for rec in records:
                append_record(fh, {"n_edits": k, **rec})
            row = {"n_edits": k, **metrics, "edit_time_s_mean": mean(edit_times)}
            append_record(cp_fh, row)
            rows.append(row)
            logger.info("sequential %s: %d edits, gen_exact %.1f", editor.name, k, row["gen_exact"])
    return rows
