"""Whole texts recalled word for word through `ask`, by length.

    python benchmarks/recall_texts.py [--corpus runs/corpus] [--per-band 60] [--model DIR]

Takes held-out sentences of the training corpus (`larimar corpus` writes them to
heldout.jsonl; no training stage saw them), in three bands of decoder tokens (up to 15, 16-25,
26-45). Each sentence is written alone into a fresh memory and asked "What do you remember?"
with the scope forced in (threshold -1: this measures the memory's recall, not the scope
decision). A reply is exact when it is the sentence itself (outer spaces aside); the word
share is the share of the sentence's words the reply gives in order before its first wrong
word. Each sentence is also continued by `generate` from its first 4 words (the raw
continuation, scope forced in), exact when the prompt and the continuation make the sentence.
Prints a table and writes JSON (benchmarks/results/recall_texts.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

import larimar

BANDS = ((1, 15), (16, 25), (26, 45))
QUESTION = "What do you remember?"
PROMPT_WORDS = 4


def leading_words(reply: str, text: str) -> float:
    """The share of `text`'s words that `reply` repeats from the start before the first difference."""
    want, got = text.split(), reply.split()
    same = 0
    for a, b in zip(want, got):
        if a != b:
            break
        same += 1
    return same / len(want)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("runs/corpus"), help="corpus folder (heldout.jsonl)")
    parser.add_argument("--per-band", type=int, default=60, help="sentences per length band")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recall_texts.json"))
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    lm = larimar.load(args.model)
    sentences = [json.loads(line)["text"] for line in (args.corpus / "heldout.jsonl").open()]
    rows, examples, started = [], [], time.time()
    for low, high in BANDS:
        band = [s for s in sentences if low <= len(lm.tokenizer(s, add_special_tokens=False)["input_ids"]) <= high]
        band = band[: args.per_band]
        memories = []
        for sentence in band:
            memory = lm.new_memory()
            memory.write([sentence])
            memories.append(memory)
        answers = lm.ask_many([QUESTION] * len(band), memories, max_new_tokens=high + 8, scope_threshold=-1.0)
        exact = [a.text.strip() == s.strip() for a, s in zip(answers, band)]
        words = [leading_words(a.text, s) for a, s in zip(answers, band)]
        prompts = [" ".join(s.split()[:PROMPT_WORDS]) for s in band]
        continued = [p + lm.generate(p, memory=m, max_new_tokens=high + 8, scope_threshold=-1.0)
                     for p, m in zip(prompts, memories)]
        whole = [c.strip() == s.strip() for c, s in zip(continued, band)]
        rows.append({"tokens": f"{low}-{high}", "texts": len(band), "exact": sum(exact) / len(band),
                     "words_before_first_error": sum(words) / len(band), "continued_exact": sum(whole) / len(band)})
        examples += [{"text": s, "reply": a.text} for a, s, ok in zip(answers, band, exact) if not ok][:5]
        examples += [{"text": s, "continued": c} for c, s, ok in zip(continued, band, whole) if not ok][:5]
        print(_line(rows[-1]), flush=True)
    result = {"rows": rows, "misses": examples, "seconds": round(time.time() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| decoder tokens | texts | exact reply | words before the first error | continued from 4 words: exact |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(_line(row))


def _line(row: dict) -> str:
    return (f"| {row['tokens']} | {row['texts']} | {row['exact']:.3f} | {row['words_before_first_error']:.3f} "
            f"| {row['continued_exact']:.3f} |")


if __name__ == "__main__":
    main()
