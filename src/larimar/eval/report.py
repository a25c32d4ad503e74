"""Plots and side-by-side tables of evaluation results.

* :func:`summary_table` -- a markdown table with one row per summary.
* :func:`plot_curves` -- a PNG of metrics against a size (N facts, N edits), log x axis.
* :func:`compare_runs` -- one markdown table from several run folders' ``summary.json``
  (e.g. every editor on one protocol), and a PNG overlaying their curves.

matplotlib is imported lazily with the non-interactive Agg backend, so nothing here needs a
display and importing this module is cheap.

Example:
    >>> plot_curves(rows, "n", ["ES", "gen_exact"], Path("runs/batch/batch.png"))  # doctest: +SKIP
    >>> print(compare_runs(["runs/seq-none", "runs/seq-icl"], ["ES", "gen_f1"]))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """The (x, y) points of ``rows`` where both values are numbers (``nan`` / ``None`` dropped)."""
    xs, ys = [], []
    for row in rows:
        a, b = row.get(x), row.get(y)
        if isinstance(a, int | float) and isinstance(b, int | float) and not math.isnan(b):
            xs.append(float(a))
            ys.append(float(b))
    return xs, ys


def plot_curves(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    ys: Sequence[str],
    path: str | Path,
    title: str = "",
    ylabel: str = "%",
    log_x: bool = True,
) -> Path:
    """Plot each metric in ``ys`` against ``x`` over ``rows`` and save a PNG at ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for y in ys:
            xs, vals = _series(rows, x, y)
            if xs:
                ax.plot(xs, vals, marker="o", label=y)
        _style(ax, x, ylabel, title, log_x)
        path = Path(path)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    logger.info("wrote %s", path)
    return path


def _style(ax: Any, x: str, ylabel: str, title: str, log_x: bool) -> None:
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


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


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of a run folder."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `larimar eval` into {run_dir} first")
    return json.loads(path.read_text(encoding="utf-8"))


def compare_runs(run_dirs: Sequence[str | Path], columns: Sequence[str],
                 digits: int = 1) -> str:
    """Markdown table of several runs side by side: one line per run and curve point."""
    lines = []
    for run_dir in run_dirs:
        summary = load_summary(run_dir)
        base = {"run": Path(run_dir).name, "editor": summary.get("editor"),
                "status": summary.get("status", "ok")}
        lines += [{**base, **row} for row in summary.get("rows") or [summary]]
    return summary_table(lines, ["run", "editor", "status", *columns], digits)


def plot_comparison(run_dirs: Sequence[str | Path], x: str, y: str, path: str | Path,
                    title: str = "") -> Path:
    """One curve of ``y`` against ``x`` per run (labelled by run folder name)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for run_dir in run_dirs:
            xs, vals = _series(load_summary(run_dir).get("rows") or [], x, y)
            if xs:
                ax.plot(xs, vals, marker="o", label=Path(run_dir).name)
        _style(ax, x, y, title, log_x=True)
        path = Path(path)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
