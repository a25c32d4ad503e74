"""Editors side by side: a table and a plot of several `larimar eval` run folders.

    python benchmarks/compare_runs.py RUN_DIR... [--x n_edits] [--y ES,gen_exact,PS,loc_unchanged] \
        [--plot docs/img/sequential_100.png]

Prints one markdown line per run and curve point (the columns of `--y`), and with `--plot` draws
one panel per column of `--y` with a curve per run against `--x`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from larimar.eval.report import compare_runs, load_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="`larimar eval` output folders")
    parser.add_argument("--x", default="n_edits", help="the curve's x column")
    parser.add_argument("--y", default="ES,gen_exact,PS,para_gen_exact,loc_unchanged", help="columns, comma-separated")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    args = parser.parse_args()
    columns = [c for c in args.y.split(",") if c]
    print(compare_runs(args.runs, [args.x, *columns]))
    if args.plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.2), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for run in args.runs:
            rows = [r for r in load_summary(run).get("rows") or [] if r.get(column) is not None]
            if rows:
                ax.plot([r[args.x] for r in rows], [r[column] for r in rows], marker="o",
                        label=load_summary(run).get("editor") or run.name)
        ax.set_xscale("log")
        ax.set_xlabel(args.x)
        ax.set_title(column)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=100, bbox_inches="tight")
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
