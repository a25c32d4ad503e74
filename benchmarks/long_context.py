"""Long-context fact recall: facts in the prompt vs one flat memory vs recursive memory search.

    python benchmarks/long_context.py --model PATH --data ../shared/data/counterfact/counterfact-train.json \
        --sizes 16,64,256 --questions 10 --out runs/long-context

Builds (or reads, `--contexts FILE`) seeded contexts of n CounterFact counterfactual facts with one
question each (`larimar.eval.protocols.long_context`), answers them with every method, and writes
contexts.jsonl, rows.jsonl, summary.json (with this run's settings), summary.md and recall.png
into `--out`; prints the markdown table. The in-prompt baseline is skipped where the prompt does
not fit the decoder's window, or above `--max-prompt-facts`.

Rows are appended to rows.jsonl as they are scored: `--resume` continues an interrupted run in the
same `--out` (same data and seed), skipping what it already answered. Methods or sizes can run as
separate processes (shards) and be combined with `--merge DIR [DIR ...] --out DIR`, which only
summarises their rows.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import logging
import platform
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import larimar
from larimar.editing.longcontext import DEFAULT_FAN_OUT, DEFAULT_KEEP, SearchConfig
from larimar.eval.datasets import load_cases
from larimar.eval.protocols.long_context import (
    METHODS,
    BenchConfig,
    load_contexts,
    make_contexts,
    merge_rows,
    read_rows,
    run_benchmark,
    save_contexts,
    summary_markdown,
    summarize,
    write_outputs,
)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="saved Larimar model folder (default: built-in)")
    p.add_argument("--data", type=Path, help="CounterFact train split (EasyEdit flat JSON)")
    p.add_argument("--contexts", type=Path, default=None, help="reuse contexts from this JSONL instead of --data")
    p.add_argument("--sizes", type=_ints, default=(16, 64, 256), help="facts per context, e.g. 16,64,256")
    p.add_argument("--questions", type=int, default=10, help="contexts (one question each) per size")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {list(METHODS)}")
    p.add_argument("--fan-out", type=int, default=DEFAULT_FAN_OUT, help="recursive: items per memory")
    p.add_argument("--keep", type=int, default=DEFAULT_KEEP, help="recursive: readouts kept per memory")
    p.add_argument("--score", choices=["similarity", "weight"], default="similarity", help="recursive: ranking")
    p.add_argument("--readout", choices=["query", "best", "episode"], default="query", help="recursive: what is decoded")
    p.add_argument("--max-prompt-facts", type=int, default=None, help="in_prompt: skip contexts above this size")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("runs/long-context"))
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out and answer the rest")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="DIR",
                   help="summarise the rows of these runs' folders into --out (runs nothing)")
    args = p.parse_args(argv)
    if args.merge is None and args.contexts is None and args.data is None:
        p.error("pass --data (CounterFact train split) or --contexts (a saved contexts.jsonl)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.merge is not None:
        rows = merge_rows(*(read_rows(d / "rows.jsonl") for d in args.merge))
        meta = {"command": " ".join(["python", *sys.argv]), "merged": [str(d) for d in args.merge]}
        paths = write_outputs(rows, args.out, meta)
        print(summary_markdown(summarize(rows)), end="")
        print(f"results in {args.out} ({', '.join(p.name for p in paths.values())})", file=sys.stderr)
        return 0
    if args.contexts is not None:
        contexts = [c for c in load_contexts(args.contexts) if c.n in args.sizes]
    else:
        contexts = make_contexts(load_cases(args.data), args.sizes, args.questions, args.seed)
    save_contexts(contexts, args.out / "contexts.jsonl")
    search = SearchConfig(args.fan_out, args.keep, args.score, args.readout)
    config = BenchConfig(search, args.max_new_tokens, args.max_prompt_facts)
    lm = larimar.load(args.model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows_path = args.out / "rows.jsonl"
    earlier = read_rows(rows_path) if args.resume and rows_path.is_file() else []
    wanted = {c.id: c for c in contexts}
    for row in earlier:
        c = wanted.get(row["id"])
        if c is not None and c.question != row["question"]:
            raise SystemExit(f"--resume: {rows_path} was written for other contexts (data or seed differ); "
                             "use another --out or drop --resume")
    with rows_path.open("w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(r) + "\n" for r in earlier)  # rewritten whole: drops a torn last line

        def append(row: dict) -> None:
            sink.write(json.dumps(row) + "\n")
            sink.flush()

        rows = earlier + run_benchmark(lm, contexts, methods, config, track=tqdm,
                                       done={(r["id"], r["method"]) for r in earlier}, on_row=append)
    meta = {"command": " ".join(["python", *sys.argv]), "model": str(args.model or "built-in"),
            "data": str(args.contexts or args.data), "sizes": list(args.sizes), "questions": args.questions,
            "methods": methods, "search": asdict(search),
            "max_new_tokens": args.max_new_tokens, "max_prompt_facts": args.max_prompt_facts, "seed": args.seed,
            "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    paths = write_outputs(rows, args.out, meta)
    print(summary_markdown(summarize(rows)), end="")
    print(f"results in {args.out} ({', '.join(p.name for p in paths.values())})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
