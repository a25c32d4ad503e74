"""Evaluation protocols that drive any :class:`~larimar.eval.editors.Editor`.

Single-fact CounterFact (ROME, Larimar paper Table 2): for each case, reset the editor, apply
that one edit, score the rewrite / paraphrase / neighbourhood prompts against ``target_new``
and the true answer, and greedily generate from the rewrite prompt. One JSON line per case
(``cases.jsonl``) makes runs resumable; ``summary.json`` and ``config.json`` sit beside it.

Further protocols, each writing its records (JSONL), ``summary.json``, ``table.md`` and
``config.json`` into its folder, plus PNG plots of its curves (:mod:`larimar.eval.report`):

* :func:`run_batch` -- batch capacity: write N facts at once, accuracy over them vs N.
* :func:`run_sequential` -- a stream of edits, evaluated on all past edits at checkpoints,
  on held-out paraphrases, and on unrelated (locality) prompts against the unedited model.
* :func:`run_forgetting` -- write N facts, forget some, optionally rewrite them as "unknown";
  recall of the forgotten facts vs the retained ones.
* :func:`run_leakage` -- for facts the unedited model knows, write "prompt + unknown" and
  attack with paraphrases x sampled generations.

Editors that cannot forget or sample (``NotImplementedError``) are reported as not supported.
Rates are percentages; NLL deltas are in nats.

Example:
    >>> summary = run_single_fact(get_editor("dummy"), cases, "runs/dummy")  # doctest: +SKIP
    >>> print(summary_table([summary]))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

import torch

from larimar.eval.datasets import EditCase
from larimar.eval.editors import Editor
from larimar.eval.metrics import (
    contains_match,
    exact_match,
    fluency,
    harmonic_score,
    mean,
    natural_stop,
    prob_magnitude,
    prob_success,
    token_f1,
)

logger = logging.getLogger(__name__)

RECORDS_FILE = "cases.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
TABLE_FILE = "table.md"

T = TypeVar("T")
Track = Callable[[Iterable[T], str, int | None], Iterable[T]]
"""``track(items, description, total)``: wraps an iterable, e.g. in a progress bar."""


def no_progress(items: Iterable[T], description: str, total: int | None) -> Iterable[T]:
    """The default :data:`Track`: the items unchanged (library code only logs)."""
    return items


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


def read_records(
    path: Path, key: Callable[[Mapping[str, Any]], str] | None = None
) -> dict[str, dict[str, Any]]:
    """Records of a JSONL results file by ``key(record)`` (default: the case id); a torn line
    is skipped with a warning, and a later record with the same key replaces an earlier one."""
    records: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return records
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s:%d is not valid JSON (torn write?); re-running it", path, lineno)
            continue
        records[key(rec) if key else str(rec["case_id"])] = rec
    return records


def _json_safe(value: Any) -> Any:
    """Replace ``nan`` with ``None`` so files stay strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(_json_safe(data), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


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
    _write_json(out / CONFIG_FILE, config)
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
            fh.write(json.dumps(_json_safe(record)) + "\n")
            fh.flush()
            done[case.case_id] = record
            if i % 10 == 0 or i == len(todo):
                logger.info("single-fact %s: %d/%d cases", editor.name, i, len(todo))
    editor.reset()
    summary = {"editor": editor.name,
               **summarize_single_fact([done[c.case_id] for c in cases])}
    _write_json(out / SUMMARY_FILE, summary)
    (out / TABLE_FILE).write_text(summary_table([summary]), encoding="utf-8")
    return summary


DEFAULT_COLUMNS = ("editor", "n_cases", "ES", "PS", "NS", "S", "ES_mag", "PS_mag", "NS_mag",
                   "gen_exact", "gen_contains", "edit_time_s_mean")


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(
    summaries: Iterable[Mapping[str, Any]],
    columns: Sequence[str] = DEFAULT_COLUMNS,
    digits: int = 1,
) -> str:
    """Markdown table with one row per summary; missing or ``nan`` values show as ``-``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for s in summaries:
        row = [_cell(s.get(c), 3 if c.startswith("edit_time") else digits) for c in columns]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# =============================================================================== shared pieces


def _prepare_out(out_dir: str | Path, config: Mapping[str, Any]) -> Path:
    """Create ``out_dir`` and save the run's config in it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG_FILE, config)
    return out


def _open_append(path: Path) -> TextIO:
    """Open a JSONL file for appending, closing a torn last line first."""
    fh = path.open("a", encoding="utf-8")
    if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        fh.write("\n")
    return fh


def _append(fh: TextIO, record: Mapping[str, Any]) -> None:
    fh.write(json.dumps(_json_safe(record)) + "\n")
    fh.flush()


def _finish(out: Path, summary: Mapping[str, Any], table: str) -> dict[str, Any]:
    """Write ``summary.json`` and ``table.md``; return the summary."""
    _write_json(out / SUMMARY_FILE, summary)
    (out / TABLE_FILE).write_text(table, encoding="utf-8")
    return dict(summary)


def _plot(out: Path, name: str, rows: Sequence[Mapping[str, Any]], x: str,
          ys: Sequence[str], title: str) -> None:
    """A PNG of ``ys`` against ``x`` (log x axis) when there are at least two points."""
    if len(rows) < 2:
        return
    from larimar.eval.report import plot_curves

    plot_curves(rows, x, ys, out / f"{name}.png", title=title)


def _pct(flags: Iterable[bool | None]) -> float:
    """Share of True in % over the non-None flags; ``nan`` when there are none."""
    return 100.0 * mean(float(f) for f in flags if f is not None)


def _sizes(sizes: Sequence[int], n_cases: int, what: str) -> list[int]:
    """The requested sizes that the data can fill; all the data when none fits."""
    if n_cases < 1:
        raise ValueError(f"the {what} protocol needs at least one case; got none")
    if any(n < 1 for n in sizes):
        raise ValueError(f"{what} sizes must be positive; got {list(sizes)}")
    kept = sorted({n for n in sizes if n <= n_cases})
    if len(kept) < len(set(sizes)):
        logger.info("%s: sizes above the %d cases available were dropped", what, n_cases)
    return kept or [n_cases]


def _subset(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """``limit`` items drawn with a fixed seed (in their original order), or all of them."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def unknown_case(case: EditCase, answer: str = "unknown") -> EditCase:
    """The same case edited towards ``answer``: the "prompt + unknown" rewrite."""
    return dataclasses.replace(case, target_new=answer)


def _not_supported(summary: dict[str, Any], err: NotImplementedError) -> dict[str, Any]:
    logger.warning("%s: not supported by %s: %s", summary["protocol"], summary["editor"], err)
    return {**summary, "supported": False, "status": "not supported", "reason": str(err)}


def probe(
    editor: Editor, cases: Sequence[EditCase], prompts: Sequence[str], max_new_tokens: int
) -> list[dict[str, Any]]:
    """Score and generate each case's ``target_new`` after the given prompt (one per case).

    Per case: ``success`` (``target_new`` likelier than ``target_true``; ``None`` without a
    true answer), both NLLs, and for ``max_new_tokens > 0`` the greedy text, its natural-stop
    answer, exact / contains match and token F1 against ``target_new``.
    """
    if not cases:
        return []
    scored = [i for i, c in enumerate(cases) if c.target_true is not None]
    pair_prompts = [prompts[i] for i in scored for _ in range(2)]
    pair_conts = [a for i in scored for a in (cases[i].target_new, cases[i].target_true)]
    nlls = iter(editor.score(pair_prompts, pair_conts) if scored else [])
    texts = editor.generate(list(prompts), max_new_tokens) if max_new_tokens > 0 else None
    records: list[dict[str, Any]] = []
    for i, (case, prompt) in enumerate(zip(cases, prompts)):
        rec: dict[str, Any] = {"case_id": case.case_id, "prompt": prompt, "success": None}
        if case.target_true is not None:
            new, true = next(nlls), next(nlls)
            rec.update(nll_new=new, nll_true=true, success=new < true)
        if texts is not None:
            answer = natural_stop(texts[i])
            rec.update(text=texts[i], answer=answer, exact=exact_match(answer, case.target_new),
                       contains=contains_match(answer, case.target_new),
                       f1=token_f1(answer, case.target_new))
        records.append(rec)
    return records


def recall_summary(records: Sequence[Mapping[str, Any]], prefix: str = "") -> dict[str, float]:
    """ES-style success, generation exact / contains match and token F1 (all %) of probes."""
    return {
        f"{prefix}ES": _pct(r.get("success") for r in records),
        f"{prefix}gen_exact": _pct(r.get("exact") for r in records),
        f"{prefix}gen_contains": _pct(r.get("contains") for r in records),
        f"{prefix}gen_f1": 100.0 * mean(r["f1"] for r in records if "f1" in r),
    }


def rows_table(summary: Mapping[str, Any], columns: Sequence[str]) -> str:
    """Markdown table of a summary's ``rows`` with its editor name in front, or one row with
    the summary's status when the editor does not support the protocol."""
    rows = summary.get("rows") or [{}]
    return summary_table(
        [{"editor": summary["editor"], "status": summary.get("status", "ok"), **r} for r in rows],
        ["editor", "status", *columns],
    )


# =============================================================================== batch capacity

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
    ns = _sizes(sizes, len(cases), "batch")
    out = _prepare_out(out_dir, {"protocol": "batch", "editor": editor.config(), "sizes": ns,
                                 "max_eval": max_eval, "max_new_tokens": max_new_tokens,
                                 "seed": seed, "n_cases": len(cases), **(run_config or {})})
    path = out / RECORDS_FILE
    done = read_records(path, _batch_key)
    rows = []
    with _open_append(path) as fh:
        for n in track(ns, "batch", len(ns)):
            evaluated = _subset(cases[:n], max_eval, seed + n)
            recs = [done.get(f"{n}/{c.case_id}") for c in evaluated]
            if any(r is None for r in recs):
                recs = _batch_step(editor, cases[:n], evaluated, max_new_tokens)
                for rec in recs:
                    _append(fh, rec)
            rows.append({"n": n, "n_eval": len(recs), **recall_summary(recs),  # type: ignore[arg-type]
                         "edit_time_s": recs[0]["edit_time_s"]})  # type: ignore[index]
            logger.info("batch %s: N=%d gen_exact %.1f", editor.name, n, rows[-1]["gen_exact"])
    editor.reset()
    _plot(out, "batch", rows, "n", ["ES", "gen_exact", "gen_contains"],
          f"batch capacity ({editor.name})")
    summary = {"protocol": "batch", "editor": editor.name, "rows": rows}
    return _finish(out, summary, rows_table(summary, BATCH_COLUMNS))


def _batch_step(editor: Editor, written: Sequence[EditCase], evaluated: Sequence[EditCase],
                max_new_tokens: int) -> list[dict[str, Any]]:
    editor.reset()
    start = time.perf_counter()
    editor.edit(written)
    elapsed = time.perf_counter() - start
    recs = probe(editor, evaluated, [c.prompt for c in evaluated], max_new_tokens)
    return [{"n": len(written), "edit_time_s": elapsed, **r} for r in recs]


# =============================================================================== sequential

CHECKPOINTS = (1, 10, 100, 1000)
SEQUENTIAL_COLUMNS = ("n_edits", "ES", "gen_exact", "gen_f1", "PS", "para_gen_exact",
                      "para_gen_f1", "loc_unchanged", "loc_nll_delta", "edit_time_s_mean")
BASELINE_FILE = "locality_baseline.jsonl"
CHECKPOINTS_FILE = "checkpoints.jsonl"


def _locality_items(cases: Sequence[EditCase], per_case: int) -> list[dict[str, str]]:
    return [{"case_id": c.case_id, "prompt": n.prompt, "answer": n.answer}
            for c in cases for n in c.neighborhood_prompts[:per_case]]


def locality_probe(editor: Editor, items: Sequence[Mapping[str, str]],
                   max_new_tokens: int) -> list[dict[str, Any]]:
    """NLL of each locality answer and the greedy natural-stop answer to its prompt."""
    if not items:
        return []
    prompts = [it["prompt"] for it in items]
    nlls = editor.score(prompts, [it["answer"] for it in items])
    answers = ([natural_stop(t) for t in editor.generate(prompts, max_new_tokens)]
               if max_new_tokens > 0 else [None] * len(items))
    return [{**it, "nll": nll, "answer_gen": a} for it, nll, a in zip(items, nlls, answers)]


def _loc_key(rec: Mapping[str, Any]) -> str:
    return f"{rec['case_id']}\x00{rec['prompt']}"


def _locality_baseline(editor: Editor, items: Sequence[Mapping[str, str]], path: Path,
                       max_new_tokens: int) -> dict[str, dict[str, Any]]:
    """The unedited editor's locality probes, cached in ``path`` (JSONL) for resumed runs."""
    done = read_records(path, _loc_key)
    todo = [it for it in items if _loc_key(it) not in done]
    if todo:
        editor.reset()
        with _open_append(path) as fh:
            for rec in locality_probe(editor, todo, max_new_tokens):
                _append(fh, rec)
                done[_loc_key(rec)] = rec
    return done


def _checkpoint_eval(editor: Editor, past: Sequence[EditCase], loc_items: Sequence[Mapping[str, str]],
                     baseline: Mapping[str, Mapping[str, Any]],
                     max_new_tokens: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-case records and metrics over all past edits at one checkpoint."""
    rewrite = probe(editor, past, [c.prompt for c in past], max_new_tokens)
    with_para = [c for c in past if c.paraphrase_prompts]
    para = probe(editor, with_para, [c.paraphrase_prompts[0] for c in with_para], max_new_tokens)
    loc = locality_probe(editor, loc_items, max_new_tokens)
    for rec in loc:
        before = baseline[_loc_key(rec)]
        rec.update(nll_before=before["nll"], answer_before=before["answer_gen"],
                   unchanged=None if rec["answer_gen"] is None
                   else rec["answer_gen"] == before["answer_gen"])
    para_metrics = recall_summary(para)
    metrics = {**recall_summary(rewrite), "PS": para_metrics.pop("ES"),
               **{f"para_{k}": v for k, v in para_metrics.items()},
               "loc_unchanged": _pct(r["unchanged"] for r in loc),
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
    cps = _sizes([*checkpoints, n], n, "sequential")
    out = _prepare_out(out_dir, {"protocol": "sequential", "editor": editor.config(),
                                 "n_edits": n, "checkpoints": cps,
                                 "locality_per_case": locality_per_case,
                                 "max_new_tokens": max_new_tokens, **(run_config or {})})
    loc_items = _locality_items(cases, locality_per_case)
    baseline = _locality_baseline(editor, loc_items, out / BASELINE_FILE, max_new_tokens)
    done = read_records(out / CHECKPOINTS_FILE, lambda r: str(r["n_edits"]))
    rows = _stream(editor, cases, cps, done, loc_items, baseline, out, max_new_tokens, track)
    editor.reset()
    _plot(out, "sequential", rows, "n_edits",
          ["ES", "gen_exact", "gen_f1", "para_gen_exact", "loc_unchanged"],
          f"sequential edits ({editor.name})")
    summary = {"protocol": "sequential", "editor": editor.name, "n_edits": n, **rows[-1],
               "rows": rows}
    return _finish(out, summary, rows_table(summary, SEQUENTIAL_COLUMNS))


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
    with _open_append(out / CHECKPOINTS_FILE) as cp_fh, _open_append(out / RECORDS_FILE) as fh:
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
                _append(fh, {"n_edits": k, **rec})
            row = {"n_edits": k, **metrics, "edit_time_s_mean": mean(edit_times)}
            _append(cp_fh, row)
            rows.append(row)
            logger.info("sequential %s: %d edits, gen_exact %.1f", editor.name, k, row["gen_exact"])
    return rows


# =============================================================================== forgetting

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
    ns = _sizes(sizes, len(cases), "forgetting")
    if n_forget < 1:
        raise ValueError(f"n_forget must be at least 1; got {n_forget}")
    out = _prepare_out(out_dir, {"protocol": "forgetting", "editor": editor.config(), "sizes": ns,
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
        with _open_append(path) as fh:
            for n in track(ns, "forgetting", len(ns)):
                recs = _forget_step_cached(editor, cases[:n], done, fh, n_forget,
                                           rewrite_unknown, max_eval, max_new_tokens, seed + n)
                rows.append(_forget_row(n, recs))
    except NotImplementedError as err:
        editor.reset()
        unsupported = _not_supported(summary, err)
        return _finish(out, unsupported, rows_table(unsupported, FORGETTING_COLUMNS))
    editor.reset()
    _plot(out, "forgetting", rows, "n",
          ["forgotten_gen_contains", "retained_gen_contains"], f"forgetting ({editor.name})")
    summary.update(supported=True, rows=rows)
    return _finish(out, summary, rows_table(summary, FORGETTING_COLUMNS))


def _forget_plan(written: Sequence[EditCase], n_forget: int, max_eval: int | None,
                 seed: int) -> tuple[list[EditCase], list[EditCase]]:
    """The facts to forget and the retained facts to evaluate, both drawn with ``seed``."""
    picked = set(random.Random(seed).sample(range(len(written)), min(n_forget, len(written))))
    forgotten = [c for i, c in enumerate(written) if i in picked]
    retained = [c for i, c in enumerate(written) if i not in picked]
    return forgotten, _subset(retained, max_eval, seed + 1)


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
        _append(fh, rec)
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
        "unknown_rate": _pct(contains_match(r.get("answer", ""), "unknown") for r in forgotten),
        "forget_time_s": recs[0]["forget_time_s"] if recs else math.nan,
    }


# =============================================================================== leakage

KnownBy = Literal["generate", "rank", "either"]
LEAKAGE_COLUMNS = ("n_scanned", "n_known", "attacks_per_case", "attack_success",
                   "greedy_leak", "unknown_rate")
KNOWN_FILE = "known.jsonl"


def _known_flags(editor: Editor, cases: Sequence[EditCase], max_new_tokens: int
                 ) -> list[dict[str, Any]]:
    """Whether the (reset) editor ranks ``target_true`` above ``target_new`` on the rewrite
    prompt, and whether its greedy answer contains ``target_true``."""
    prompts = [c.prompt for c in cases]
    nlls = editor.score([p for p in prompts for _ in range(2)],
                        [a for c in cases for a in (c.target_true, c.target_new)])
    texts = editor.generate(prompts, max_new_tokens)
    return [{"case_id": c.case_id, "ranks_true": nlls[2 * i] < nlls[2 * i + 1],
             "generates_true": contains_match(natural_stop(t), c.target_true or ""),
             "text": t} for i, (c, t) in enumerate(zip(cases, texts))]


def _is_known(rec: Mapping[str, Any], known_by: KnownBy) -> bool:
    if known_by == "rank":
        return bool(rec["ranks_true"])
    if known_by == "generate":
        return bool(rec["generates_true"])
    return bool(rec["ranks_true"] or rec["generates_true"])


def known_cases(editor: Editor, cases: Sequence[EditCase], n_known: int, known_by: KnownBy,
                path: Path, max_new_tokens: int, chunk: int = 32) -> tuple[list[EditCase], int]:
    """The first ``n_known`` cases the unedited editor knows, and how many were scanned.

    Checks are cached in ``path`` (JSONL) so a resumed run does not repeat them.
    """
    usable = [c for c in cases if c.target_true is not None]
    if not usable:
        raise ValueError("the leakage protocol needs cases with target_true "
                         "(CounterFact, or zsRE loaded with zsre_target='alt')")
    done = read_records(path)
    known: list[EditCase] = []
    scanned = 0
    editor.reset()
    with _open_append(path) as fh:
        for start in range(0, len(usable), chunk):
            part = usable[start:start + chunk]
            todo = [c for c in part if c.case_id not in done]
            for rec in _known_flags(editor, todo, max_new_tokens) if todo else []:
                _append(fh, rec)
                done[rec["case_id"]] = rec
            for c in part:
                scanned += 1
                if _is_known(done[c.case_id], known_by):
                    known.append(c)
                if len(known) == n_known:
                    return known, scanned
    return known, scanned


def attack(editor: Editor, case: EditCase, n_paraphrases: int, n_samples: int,
           temperature: float, max_new_tokens: int, seed: int) -> dict[str, Any]:
    """Sampled generations from the rewrite prompt and up to ``n_paraphrases`` paraphrases;
    success when any contains ``target_true``. Seeds torch's generator with ``seed`` first."""
    prompts = [case.prompt, *case.paraphrase_prompts[:n_paraphrases]]
    torch.manual_seed(seed)
    texts = editor.generate([p for p in prompts for _ in range(n_samples)], max_new_tokens,
                            temperature=temperature)
    hits = [contains_match(t, case.target_true or "") for t in texts]
    greedy = editor.generate([case.prompt], max_new_tokens)[0]
    return {"case_id": case.case_id, "target_true": case.target_true, "prompts": prompts,
            "samples": texts, "hits": hits, "success": any(hits), "greedy": greedy,
            "greedy_leak": contains_match(natural_stop(greedy), case.target_true or ""),
            "says_unknown": contains_match(natural_stop(greedy), "unknown")}


def run_leakage(
    editor: Editor,
    cases: Sequence[EditCase],
    out_dir: str | Path,
    *,
    n_known: int = 20,
    known_by: KnownBy = "generate",
    n_paraphrases: int = 4,
    n_samples: int = 5,
    temperature: float = 1.0,
    max_new_tokens: int = 20,
    seed: int = 0,
    run_config: Mapping[str, Any] | None = None,
    track: Track[Any] = no_progress,
) -> dict[str, Any]:
    """Leakage attack: among ``cases``, find ``n_known`` facts the unedited editor knows
    (``known_by``: its greedy answer contains ``target_true``, it ranks ``target_true`` above
    ``target_new``, or either); write all their "prompt + unknown" rewrites in one ``edit``
    call; attack each with its rewrite prompt and paraphrases x ``n_samples`` temperature
    samples (torch seeded with ``seed`` + case index). Attack success = % of facts whose
    true answer appears in any sample; also the greedy leak rate and the "unknown" rate.

    An editor that cannot sample is reported as not supported.

    Returns:
        ``{"protocol": "leakage", "editor", "rows": [metrics]}``; files: ``known.jsonl``
        (the knowledge check per scanned case), ``cases.jsonl`` (per attacked case, with
        every sample), ``summary.json``, ``table.md``, ``config.json``.
    """
    out = _prepare_out(out_dir, {"protocol": "leakage", "editor": editor.config(),
                                 "n_known": n_known, "known_by": known_by,
                                 "n_paraphrases": n_paraphrases, "n_samples": n_samples,
                                 "temperature": temperature, "max_new_tokens": max_new_tokens,
                                 "seed": seed, "n_cases": len(cases), **(run_config or {})})
    if temperature <= 0:
        raise ValueError(f"the leakage attack samples: temperature must be > 0; got {temperature}")
    summary: dict[str, Any] = {"protocol": "leakage", "editor": editor.name}
    try:
        editor.reset()
        editor.generate([cases[0].prompt], 1, temperature=temperature)  # can it sample?
    except NotImplementedError as err:
        unsupported = _not_supported(summary, err)
        return _finish(out, unsupported, rows_table(unsupported, LEAKAGE_COLUMNS))
    known, scanned = known_cases(editor, cases, n_known, known_by, out / KNOWN_FILE,
                                 max_new_tokens)
    logger.info("leakage %s: %d known facts in %d scanned", editor.name, len(known), scanned)
    try:
        recs = _attack_all(editor, known, out, n_paraphrases, n_samples, temperature,
                           max_new_tokens, seed, track)
    except NotImplementedError as err:
        editor.reset()
        unsupported = _not_supported({**summary, "n_scanned": scanned, "n_known": len(known)}, err)
        return _finish(out, unsupported, rows_table(unsupported, LEAKAGE_COLUMNS))
    editor.reset()
    row = {"n_scanned": scanned, "n_known": len(known),
           "attacks_per_case": mean(len(r["samples"]) for r in recs),
           "attack_success": _pct(r["success"] for r in recs),
           "greedy_leak": _pct(r["greedy_leak"] for r in recs),
           "unknown_rate": _pct(r["says_unknown"] for r in recs)}
    summary.update(supported=True, **row, rows=[row])
    return _finish(out, summary, rows_table(summary, LEAKAGE_COLUMNS))


def _attack_all(editor: Editor, known: Sequence[EditCase], out: Path, n_paraphrases: int,
                n_samples: int, temperature: float, max_new_tokens: int, seed: int,
                track: Track[Any]) -> list[dict[str, Any]]:
    path = out / RECORDS_FILE
    done = read_records(path)
    todo = [(i, c) for i, c in enumerate(known) if c.case_id not in done]
    if todo:
        editor.reset()
        editor.edit([unknown_case(c) for c in known])
        with _open_append(path) as fh:
            for i, case in track(todo, "leakage", len(todo)):
                rec = attack(editor, case, n_paraphrases, n_samples, temperature,
                             max_new_tokens, seed + i)
                _append(fh, rec)
                done[case.case_id] = rec
    return [done[c.case_id] for c in known]
