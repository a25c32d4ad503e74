"""Pieces every protocol shares: result files, resumable JSONL records, probes, tables.

Rates are percentages; a ``nan`` is written as ``null`` so files stay strict JSON.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor
from larimar.eval.metrics import contains_match, exact_match, mean, natural_stop, token_f1
from larimar.eval.report import plot_curves, summary_table

logger = logging.getLogger(__name__)

RECORDS_FILE = "cases.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
TABLE_FILE = "table.md"
BASELINE_FILE = "locality_baseline.jsonl"

T = TypeVar("T")
Track = Callable[[Iterable[T], str, int | None], Iterable[T]]
"""``track(items, description, total)``: wraps an iterable, e.g. in a progress bar."""


def no_progress(items: Iterable[T], description: str, total: int | None) -> Iterable[T]:
    """The default :data:`Track`: the items unchanged (library code only logs)."""
    return items


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


def json_safe(value: Any) -> Any:
    """Replace ``nan`` with ``None`` so files stay strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(json_safe(data), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def prepare_out(out_dir: str | Path, config: Mapping[str, Any]) -> Path:
    """Create ``out_dir`` and save the run's config in it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, config)
    return out


def open_append(path: Path) -> TextIO:
    """Open a JSONL file for appending, closing a torn last line first."""
    fh = path.open("a", encoding="utf-8")
    if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        fh.write("\n")
    return fh


def append_record(fh: TextIO, record: Mapping[str, Any]) -> None:
    fh.write(json.dumps(json_safe(record)) + "\n")
    fh.flush()


def finish(out: Path, summary: Mapping[str, Any], table: str) -> dict[str, Any]:
    """Write ``summary.json`` and ``table.md``; return the summary."""
    write_json(out / SUMMARY_FILE, summary)
    (out / TABLE_FILE).write_text(table, encoding="utf-8")
    return dict(summary)


def plot(out: Path, name: str, rows: Sequence[Mapping[str, Any]], x: str,
          ys: Sequence[str], title: str) -> None:
    """A PNG of ``ys`` against ``x`` (log x axis) when there are at least two points."""
    if len(rows) < 2:
        return
    plot_curves(rows, x, ys, out / f"{name}.png", title=title)


def pct(flags: Iterable[bool | None]) -> float:
    """Share of True in % over the non-None flags; ``nan`` when there are none."""
    return 100.0 * mean(float(f) for f in flags if f is not None)


def checked_sizes(sizes: Sequence[int], n_cases: int, what: str) -> list[int]:
    """The requested sizes that the data can fill; all the data when none fits."""
    if n_cases < 1:
        raise ValueError(f"the {what} protocol needs at least one case; got none")
    if any(n < 1 for n in sizes):
        raise ValueError(f"{what} sizes must be positive; got {list(sizes)}")
    kept = sorted({n for n in sizes if n <= n_cases})
    if len(kept) < len(set(sizes)):
        logger.info("%s: sizes above the %d cases available were dropped", what, n_cases)
    return kept or [n_cases]


def subset(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """``limit`` items drawn with a fixed seed (in their original order), or all of them."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def unknown_case(case: EditCase, answer: str = "unknown") -> EditCase:
    """The same case edited towards ``answer``: the "prompt + unknown" rewrite."""
    return dataclasses.replace(case, target_new=answer)


def not_supported(summary: dict[str, Any], err: NotImplementedError) -> dict[str, Any]:
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
        f"{prefix}ES": pct(r.get("success") for r in records),
        f"{prefix}gen_exact": pct(r.get("exact") for r in records),
        f"{prefix}gen_contains": pct(r.get("contains") for r in records),
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


def locality_items(cases: Sequence[EditCase], per_case: int) -> list[dict[str, str]]:
    """The first ``per_case`` locality (neighbourhood) prompts of each case, with its answer."""
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


def loc_key(rec: Mapping[str, Any]) -> str:
    """A locality probe's key: its case and prompt."""
    return f"{rec['case_id']}\x00{rec['prompt']}"


def locality_baseline(editor: Editor, items: Sequence[Mapping[str, str]], path: Path,
                      max_new_tokens: int) -> dict[str, dict[str, Any]]:
    """The unedited editor's locality probes, cached in ``path`` (JSONL) for resumed runs
    (the editor is reset when any is missing)."""
    done = read_records(path, loc_key)
    todo = [it for it in items if loc_key(it) not in done]
    if todo:
        editor.reset()
        with open_append(path) as fh:
            for rec in locality_probe(editor, todo, max_new_tokens):
                append_record(fh, rec)
                done[loc_key(rec)] = rec
    return done


def mark_unchanged(probes: Sequence[dict[str, Any]], baseline: Mapping[str, Mapping[str, Any]]) -> None:
    """Add to each locality probe the unedited editor's NLL and answer, and whether its greedy
    answer is unchanged (None without generation)."""
    for rec in probes:
        before = baseline[loc_key(rec)]
        rec.update(nll_before=before["nll"], answer_before=before["answer_gen"],
                   unchanged=None if rec["answer_gen"] is None else rec["answer_gen"] == before["answer_gen"])
