"""Leakage attack: for facts the unedited model knows, write "prompt + unknown" and attack
with paraphrases x sampled generations."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor
from larimar.eval.metrics import contains_match, mean, natural_stop
from larimar.eval.protocols.common import (
    RECORDS_FILE,
    Track,
    append_record,
    finish,
    no_progress,
    not_supported,
    open_append,
    pct,
    prepare_out,
    read_records,
    rows_table,
    unknown_case,
)

logger = logging.getLogger(__name__)

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
    with open_append(path) as fh:
        for start in range(0, len(usable), chunk):
            part = usable[start:start + chunk]
            todo = [c for c in part if c.case_id not in done]
            for rec in _known_flags(editor, todo, max_new_tokens) if todo else []:
                append_record(fh, rec)
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
    out = prepare_out(out_dir, {"protocol": "leakage", "editor": editor.config(),
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
        unsupported = not_supported(summary, err)
        return finish(out, unsupported, rows_table(unsupported, LEAKAGE_COLUMNS))
    known, scanned = known_cases(editor, cases, n_known, known_by, out / KNOWN_FILE,
                                 max_new_tokens)
    logger.info("leakage %s: %d known facts in %d scanned", editor.name, len(known), scanned)
    try:
        recs = _attack_all(editor, known, out, n_paraphrases, n_samples, temperature,
                           max_new_tokens, seed, track)
    except NotImplementedError as err:
        editor.reset()
        unsupported = not_supported({**summary, "n_scanned": scanned, "n_known": len(known)}, err)
        return finish(out, unsupported, rows_table(unsupported, LEAKAGE_COLUMNS))
    editor.reset()
    row = {"n_scanned": scanned, "n_known": len(known),
           "attacks_per_case": mean(len(r["samples"]) for r in recs),
           "attack_success": pct(r["success"] for r in recs),
           "greedy_leak": pct(r["greedy_leak"] for r in recs),
           "unknown_rate": pct(r["says_unknown"] for r in recs)}
    summary.update(supported=True, **row, rows=[row])
    return finish(out, summary, rows_table(summary, LEAKAGE_COLUMNS))


def _attack_all(editor: Editor, known: Sequence[EditCase], out: Path, n_paraphrases: int,
                n_samples: int, temperature: float, max_new_tokens: int, seed: int,
                track: Track[Any]) -> list[dict[str, Any]]:
    path = out / RECORDS_FILE
    done = read_records(path)
    todo = [(i, c) for i, c in enumerate(known) if c.case_id not in done]
    if todo:
        editor.reset()
        editor.edit([unknown_case(c) for c in known])
        with open_append(path) as fh:
            for i, case in track(todo, "leakage", len(todo)):
                rec = attack(editor, case, n_paraphrases, n_samples, temperature,
                             max_new_tokens, seed + i)
                append_record(fh, rec)
                done[case.case_id] = rec
    return [done[c.case_id] for c in known]
