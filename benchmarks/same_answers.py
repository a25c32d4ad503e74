"""Whether two versions of the code answer alike: run it under each, then compare the two files.

    python benchmarks/same_answers.py --data benchmarks/questions/questions.json --out A.json
    PYTHONPATH=<other checkout>/src python benchmarks/same_answers.py --data ... --out B.json
    python benchmarks/same_answers.py --compare A.json B.json

The run writes every fact of the question set into one memory of the built-in model in writes
of 7, forgets every 9th fact written, writes all facts again (two episodes), then asks the first
`--asks` questions and recalls every 5th stored item. The comparison counts identical replies
(text, scope and the fact drawn on) and the largest difference between the recalled readouts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import larimar


def run(data: Path, asks: int) -> dict:
    facts = json.loads(data.read_text())["facts"]
    lm = larimar.load()
    memory = lm.new_memory()
    texts = [f["fact"] for f in facts]
    ids: list[str] = []
    for start in range(0, len(texts), 7):
        ids += memory.write(texts[start : start + 7])
    for fact_id in ids[::9]:
        memory.forget(fact_id)
    memory.write(texts)
    text_of = {f.id: f.text for f in memory.facts()}
    answers = []
    for fact in facts[:asks]:
        answer = lm.ask(fact["question"], memory, max_new_tokens=16)
        answers.append([answer.text, answer.in_scope, text_of.get(answer.fact_id or ""), answer.similarity])
    rows = range(0, len(memory.items.owners), 5)
    return {"answers": answers, "recall": memory.recall(rows).tolist(), "memory": repr(memory)}


def compare(a: dict, b: dict) -> str:
    same = sum(x[:3] == y[:3] for x, y in zip(a["answers"], b["answers"], strict=True))
    gap = max(abs(p - q) for r, s in zip(a["recall"], b["recall"], strict=True) for p, q in zip(r, s, strict=True))
    return (f"replies identical (text, scope, fact): {same} of {len(a['answers'])}; "
            f"recalled readouts ({len(a['recall'])} items): largest difference {gap:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="question set (benchmarks/questions/questions.json)")
    parser.add_argument("--asks", type=int, default=60, help="questions asked")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="where to write this run's answers")
    parser.add_argument("--compare", type=Path, nargs=2, metavar="JSON", help="compare two runs' files")
    args = parser.parse_args()
    if args.compare:
        print(compare(*(json.loads(p.read_text()) for p in args.compare)))
        return
    if args.data is None or args.out is None:
        parser.error("give --data and --out (or --compare A B)")
    torch.set_num_threads(args.threads)
    result = run(args.data, args.asks)
    args.out.write_text(json.dumps(result) + "\n")
    print(f"{result['memory']}: wrote {args.out}")


if __name__ == "__main__":
    main()
