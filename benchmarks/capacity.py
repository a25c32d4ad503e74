"""Capacity: many facts in one memory, asked back by generation.

    python benchmarks/capacity.py --data PATH/counterfact-val.json --filler PATH/counterfact-train.json \
        --unrelated PATH/zsre_mend_train-1k.json [--sizes 1,64,1024,4096,10000] [--asked 100]

Writes N CounterFact facts (EasyEdit or ROME format) into one memory, growing it size by size:
first the `--asked` facts of `--data`, then the rest of `--data` and the `--filler` facts. At
each size the asked facts are asked by greedy generation: the rewrite prompt and its first
paraphrase must generate the new answer (within `--new-tokens` tokens). Two locality rows: the
asked facts' neighbourhood prompts (same relation and template as an edit; among thousands of
edits some of their subjects are edited too), and unrelated prompts (the `loc` questions of a
zsRE file, or the neighbourhood prompts of `--data` when none is given) that must generate
exactly what the unedited model generates. The single-fact reference writes each asked fact
alone. Prints a table, writes JSON (benchmarks/results/capacity.json).

Ask facts held out of training (counterfact-val): the built-in scope detector was fitted on
CounterFact train cases, which may only fill the memory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

import larimar
from larimar.eval.datasets import load_cases
from larimar.eval.questions import holds


def ask_back(lm: larimar.Larimar, memory: larimar.Memory | None, cases: list, new_tokens: int) -> dict[str, float]:
    rewrite = lm.generate_many([c.prompt for c in cases], memory, new_tokens)
    para = [c for c in cases if c.paraphrase_prompts]
    paraphrase = lm.generate_many([c.paraphrase_prompts[0] for c in para], memory, new_tokens)
    return {"rewrite": sum(holds(t, c.target_new) for t, c in zip(rewrite, cases)) / len(cases),
            "paraphrase": sum(holds(t, c.target_new) for t, c in zip(paraphrase, para)) / max(1, len(para))}


def matched(lm: larimar.Larimar, memory: larimar.Memory, prompt: str) -> dict:
    """The written fact a prompt was routed to, and the detector's score."""
    decision = lm.scope(prompt, memory)
    fact = next((f.text for f in memory.facts() if f.id == decision.fact_id), None)
    return {"prompt": prompt, "in_scope": decision.in_scope, "score": decision.score, "fact": fact}


def plot(result: dict, path: Path) -> None:
    """Rewrite, paraphrase and unchanged-prompt rates against facts in memory, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("rewrite", "rewrite"), ("paraphrase", "paraphrase"),
                       ("neighbourhood_unchanged", "neighbourhood prompts unchanged"),
                       ("unrelated_unchanged", "unrelated prompts unchanged")):
        ax.plot([r["facts"] for r in rows], [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("facts in one memory")
    ax.set_ylabel("rate")
    ax.set_title("held-out CounterFact facts asked back by generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="CounterFact file (EasyEdit flat or ROME); asked (required unless --replot)")
    parser.add_argument("--filler", type=Path, default=None, help="CounterFact file whose facts fill the memory")
    parser.add_argument("--unrelated", type=Path, default=None, help="zsRE file whose loc questions are unrelated")
    parser.add_argument("--n-unrelated", type=int, default=200, help="unrelated prompts at most")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--sizes", default="1,64,1024,4096,10000")
    parser.add_argument("--asked", type=int, default=100, help="facts asked back at each size")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/capacity.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/capacity.png"), help="PNG of the rates")
    parser.add_argument("--replot", action="store_true", help="only draw --plot from the JSON at --out")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text()), args.plot)
        return
    if args.data is None:
        parser.error("--data is required (unless --replot)")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    lm = larimar.load(args.model)
    cases = load_cases(args.data)
    if args.filler is not None:
        cases += load_cases(args.filler, limit=max(sizes))
    if len(cases) < max(sizes):
        raise SystemExit(f"{args.data} (and --filler) hold {len(cases)} cases; the largest size is {max(sizes)}")
    cases = cases[: max(sizes)]
    asked = cases[: args.asked]

    single = {"rewrite": 0.0, "paraphrase": 0.0}
    for case in asked:
        memory = lm.new_memory()
        memory.write([case.fact])
        for k, v in ask_back(lm, memory, [case], args.new_tokens).items():
            single[k] += v / len(asked)
    local = [c for c in asked if c.neighborhood_prompts]
    local_prompts = [c.neighborhood_prompts[0].prompt for c in local]
    base = lm.generate_many(local_prompts, None, args.new_tokens)
    if args.unrelated is not None:
        unrelated = [c.neighborhood_prompts[0].prompt for c in load_cases(args.unrelated) if c.neighborhood_prompts]
    else:
        unrelated = [c.neighborhood_prompts[0].prompt for c in cases[args.asked :] if c.neighborhood_prompts]
    unrelated = unrelated[: args.n_unrelated]
    unrelated_base = lm.generate_many(unrelated, None, args.new_tokens)

    memory, rows = lm.new_memory(), []
    for n in sizes:
        start = time.perf_counter()
        for i in range(len(memory), n, 512):
            memory.write([c.fact for c in cases[i : min(i + 512, n)]])
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        got = ask_back(lm, memory, asked[:n], args.new_tokens)
        in_memory = [i for i, c in enumerate(local) if i < n]
        with_memory = lm.generate_many([local_prompts[i] for i in in_memory], memory, args.new_tokens)
        unchanged = sum(w == base[i] for w, i in zip(with_memory, in_memory)) / max(1, len(in_memory))
        far = lm.generate_many(unrelated, memory, args.new_tokens)
        row = {"facts": n, "episodes": memory.episodes, "asked": min(n, len(asked)), **got,
               "rewrite_vs_single": got["rewrite"] / max(single["rewrite"], 1e-9),
               "paraphrase_vs_single": got["paraphrase"] / max(single["paraphrase"], 1e-9),
               "neighbourhood_unchanged": unchanged,
               "unrelated_unchanged": sum(a == b for a, b in zip(far, unrelated_base)) / max(1, len(unrelated)),
               "unrelated_changed": [matched(lm, memory, p) | {"base": b, "with_memory": a}
                                     for p, a, b in zip(unrelated, far, unrelated_base) if a != b][:10],
               "write_s": write_s, "ask_s": time.perf_counter() - start}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\nsingle fact (each written alone): rewrite {single['rewrite']:.3f}, paraphrase {single['paraphrase']:.3f}")
    print(f"unrelated prompts: {len(unrelated)}")
    print("\n| facts in memory | episodes | asked | rewrite | x single | paraphrase | x single "
          "| neighbourhood unchanged | unrelated unchanged |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['facts']} | {r['episodes']} | {r['asked']} | {r['rewrite']:.3f} | {r['rewrite_vs_single']:.2f} | "
              f"{r['paraphrase']:.3f} | {r['paraphrase_vs_single']:.2f} | {r['neighbourhood_unchanged']:.3f} | "
              f"{r['unrelated_unchanged']:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": args.data.name, "filler": args.filler and args.filler.name,
                                    "unrelated": args.unrelated and args.unrelated.name, "single": single,
                                    "rows": rows, "new_tokens": args.new_tokens}, indent=2) + "\n")
    plot(json.loads(args.out.read_text()), args.plot)
    print(f"\nwrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
