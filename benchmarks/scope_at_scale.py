"""Scope decisions at scale: which prompts a memory of N facts takes in scope, without decoding.

    python benchmarks/scope_at_scale.py --data PATH/counterfact-val.json --filler PATH/counterfact-train.json \
        --unrelated PATH/zsre_mend_train-1k.json [--n 10000] [--questions benchmarks/questions/questions.json]

Writes N CounterFact facts into one memory (the first `--asked` of `--data`, then the rest of
`--data` and `--filler`, as `capacity.py` does) and reports, at several scope thresholds, the
share of prompts taken in scope: the asked facts' rewrite prompts (also typed in lower case) and
first paraphrases (should be in scope), their neighbourhood prompts (same relation, another
subject; among thousands of facts some of those subjects are written too), and unrelated
questions (the `loc` questions of a zsRE file; should be out of scope). With `--questions`, the
project's question benchmark is written in a memory of its own and its questions, rephrased
questions, questions typed in lower case and unrelated questions are decided the same way.
A scope decision is an encoder pass and the detector; this takes minutes where `capacity.py`,
which generates every reply, takes tens of minutes. Prints a table, writes JSON
(benchmarks/results/scope_at_scale.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

import larimar
from larimar.eval.datasets import load_cases
from larimar.train.scope import casual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="CounterFact file whose first facts are asked")
    parser.add_argument("--filler", type=Path, default=None, help="CounterFact file whose facts fill the memory")
    parser.add_argument("--unrelated", type=Path, required=True, help="zsRE file whose loc questions are unrelated")
    parser.add_argument("--questions", type=Path, default=None, help="the question benchmark (benchmarks/questions)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--n", type=int, default=10000, help="facts in the memory")
    parser.add_argument("--asked", type=int, default=100)
    parser.add_argument("--n-unrelated", type=int, default=200)
    parser.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scope_at_scale.json"))
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    lm = larimar.load(args.model)
    cases = load_cases(args.data) + (load_cases(args.filler, limit=args.n) if args.filler else [])
    if len(cases) < args.n:
        raise SystemExit(f"{args.data} (and --filler) hold {len(cases)} cases; --n is {args.n}")
    cases, start = cases[: args.n], time.perf_counter()
    memory = lm.new_memory()
    for i in range(0, args.n, 512):
        memory.write([c.fact for c in cases[i : i + 512]])
    print(f"wrote {args.n} facts in {time.perf_counter() - start:.0f} s", flush=True)
    asked = cases[: args.asked]
    unrelated = [c.neighborhood_prompts[0].prompt for c in load_cases(args.unrelated) if c.neighborhood_prompts]
    sets: dict[str, tuple[list[str], larimar.Memory]] = {
        "rewrite": ([c.prompt for c in asked], memory),
        "rewrite, lower case": ([casual(c.prompt) for c in asked], memory),
        "paraphrase": ([c.paraphrase_prompts[0] for c in asked if c.paraphrase_prompts], memory),
        "neighbourhood": ([c.neighborhood_prompts[0].prompt for c in asked if c.neighborhood_prompts], memory),
        "unrelated": (unrelated[: args.n_unrelated], memory),
    }
    if args.questions is not None:
        bench = json.loads(args.questions.read_text())
        own = lm.new_memory()
        own.write([f["fact"] for f in bench["facts"]])
        sets |= {"own questions": ([f["question"] for f in bench["facts"]], own),
                 "own rephrased": ([f["rephrased"] for f in bench["facts"]], own),
                 "own questions, lower case": ([casual(f["question"]) for f in bench["facts"]], own),
                 "own unrelated": (bench["unrelated"], own)}
    thresholds = [float(t) for t in args.thresholds.split(",")]
    scores: dict[str, list[float]] = {}
    taken: dict[str, list[dict]] = {}
    for name, (prompts, mem) in sets.items():
        decisions = lm.scope_many(prompts, [mem] * len(prompts))
        scores[name] = [d.score for d in decisions]
        if name == "unrelated":
            text = {f.id: f.text for f in mem.facts()}
            taken[name] = [{"prompt": p, "score": round(d.score, 3), "fact": text.get(d.fact_id)}
                           for p, d in zip(prompts, decisions) if d.in_scope]
    rows = {name: {str(t): sum(s >= t for s in got) / len(got) for t in thresholds} for name, got in scores.items()}
    print(f"\nshare of prompts in scope ({args.n} facts in memory; the shipped threshold is {lm.scope_threshold})\n")
    print("| prompts | n | " + " | ".join(f"p >= {t}" for t in thresholds) + " |")
    print("|---|---:|" + "---:|" * len(thresholds))
    for name, row in rows.items():
        print(f"| {name} | {len(scores[name])} | " + " | ".join(f"{row[str(t)]:.3f}" for t in thresholds) + " |")
    print("\nunrelated prompts in scope at the shipped threshold:")
    for t in taken.get("unrelated", []):
        print(f"  {t['score']:.2f}  {t['prompt']!r} -> {t['fact']!r}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"facts": args.n, "threshold": lm.scope_threshold, "in_scope": rows,
                                    "counts": {k: len(v) for k, v in scores.items()},
                                    "unrelated_in_scope": taken.get("unrelated", [])}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
