"""Evaluation protocols that drive any :class:`~larimar.eval.editor.Editor`, one file each.

* :mod:`.single` -- :func:`run_single_fact`: single-fact CounterFact (ROME, Larimar Table 2).
* :mod:`.batch` -- :func:`run_batch`: write N facts at once, accuracy over them against N.
* :mod:`.sequential` -- :func:`run_sequential`: a stream of edits, evaluated on all past edits
  at checkpoints, on held-out paraphrases, and on unrelated (locality) prompts.
* :mod:`.forgetting` -- :func:`run_forgetting`: write N facts, forget some, optionally rewrite
  them as "unknown"; recall of the forgotten facts against the retained ones.
* :mod:`.leakage` -- :func:`run_leakage`: for facts the unedited model knows, write
  "prompt + unknown" and attack with paraphrases x sampled generations.
* :mod:`.common` -- result files, resumable JSONL records, probes and tables they share.

Each writes its records (JSONL, resumable), ``summary.json``, ``table.md`` and
``config.json`` into its folder, plus PNG plots of its curves (:mod:`larimar.eval.report`).
Editors that cannot forget or sample (``NotImplementedError``) are reported as not supported.
Rates are percentages; NLL deltas are in nats.

Example:
    >>> summary = run_single_fact(get_editor("dummy"), cases, "runs/dummy")  # doctest: +SKIP
    >>> print(summary_table([summary]))  # doctest: +SKIP
"""

from larimar.eval.protocols.batch import BATCH_COLUMNS, BATCH_SIZES, run_batch
from larimar.eval.protocols.common import (
    BASELINE_FILE,
    CONFIG_FILE,
    RECORDS_FILE,
    SUMMARY_FILE,
    TABLE_FILE,
    Track,
    locality_probe,
    no_progress,
    probe,
    read_records,
    recall_summary,
    rows_table,
    unknown_case,
)
from larimar.eval.protocols.forgetting import FORGET_SIZES, FORGETTING_COLUMNS, run_forgetting
from larimar.eval.protocols.leakage import (
    KNOWN_FILE,
    LEAKAGE_COLUMNS,
    KnownBy,
    attack,
    known_cases,
    run_leakage,
)
from larimar.eval.protocols.sequential import CHECKPOINTS, CHECKPOINTS_FILE, SEQUENTIAL_COLUMNS, run_sequential
from larimar.eval.protocols.single import evaluate_case, run_single_fact, summarize_single_fact
from larimar.eval.report import DEFAULT_COLUMNS, summary_table

__all__ = [
    "BASELINE_FILE", "BATCH_COLUMNS", "BATCH_SIZES", "CHECKPOINTS", "CHECKPOINTS_FILE",
    "CONFIG_FILE", "DEFAULT_COLUMNS", "FORGETTING_COLUMNS", "FORGET_SIZES", "KNOWN_FILE",
    "LEAKAGE_COLUMNS", "RECORDS_FILE", "SEQUENTIAL_COLUMNS", "SUMMARY_FILE", "TABLE_FILE",
    "KnownBy", "Track", "attack", "evaluate_case", "known_cases", "locality_probe",
    "no_progress", "probe", "read_records", "recall_summary", "rows_table", "run_batch",
    "run_forgetting", "run_leakage", "run_sequential", "run_single_fact",
    "summarize_single_fact", "summary_table", "unknown_case",
]
