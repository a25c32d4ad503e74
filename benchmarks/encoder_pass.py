"""The frozen encoder's pass with prepacked linear layers against `F.linear`, paired in one run.

    python benchmarks/encoder_pass.py [--threads 1] [--repeats 30] [--out benchmarks/results/encoder_pass.json]

The built-in encoder body (all-MiniLM-L6-v2) is loaded twice: as `SentenceEncoder` freezes it
(`larimar.model.packed`, pooler dropped) and as loaded (`F.linear`, pooler kept, as before).
For each input (a query, a fact, a long text, a batch of 64 facts) both bodies run back to back,
in turn first, after a pass over a buffer larger than the cache (as a decoder pass leaves it);
the table gives median ms, the median of the paired ratios and the largest difference between
the two bodies' mean-pooled states (float rounding). To see a CPU without AVX-512, run with
`ONEDNN_MAX_CPU_ISA=AVX2`. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from larimar.model.assets import load_default_encoder
from larimar.model.encoder import SentenceEncoder, mean_pool

QUERY = "The mother tongue of Danielle Darrieux is"
FACT = "The Colosseum is located in Berlin."
LONG = ("My dentist appointment is on Thursday at 3 pm at the clinic on Harbour Street, and the "
        "receptionist asked me to bring my insurance card, the referral letter and a list of my medicines.")
INPUTS = {"query": [QUERY], "fact": [FACT], "long text": [LONG], "64 facts": [f"{FACT} ({i})" for i in range(64)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/encoder_pass.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    plain, tokenizer = load_default_encoder()
    packed = SentenceEncoder(copy.deepcopy(plain), tokenizer, trainable=False).encoder  # as the model freezes it
    flush = torch.ones(16 * 1024 * 1024, dtype=torch.float64)  # 128 MB, past any cache

    def timed(body: torch.nn.Module, batch: dict) -> float:
        flush.add_(1.0)
        start = time.perf_counter()
        body(**batch)
        return time.perf_counter() - start

    rows = {}
    with torch.inference_mode():
        for name, texts in INPUTS.items():
            batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
            mask = batch["attention_mask"]
            gap = (mean_pool(packed(**batch).last_hidden_state, mask)
                   - mean_pool(plain(**batch).last_hidden_state, mask)).abs().max().item()
            times: dict[str, list[float]] = {"plain": [], "packed": []}
            ratios = []
            for i in range(args.repeats):
                order = ("packed", "plain") if i % 2 else ("plain", "packed")
                got = {key: timed(packed if key == "packed" else plain, batch) for key in order}
                for key, value in got.items():
                    times[key].append(value)
                ratios.append(got["packed"] / got["plain"])
            rows[name] = {"tokens": int(mask.sum(1).max()), "texts": len(texts),
                          "plain_ms": 1e3 * statistics.median(times["plain"]),
                          "packed_ms": 1e3 * statistics.median(times["packed"]),
                          "packed_over_plain_paired": statistics.median(ratios), "max_abs_difference": gap}
    print("| input | texts x tokens | F.linear ms | prepacked ms | prepacked / F.linear, paired | largest difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['texts']} x {r['tokens']} | {r['plain_ms']:.2f} | {r['packed_ms']:.2f} | "
              f"{r['packed_over_plain_paired']:.2f} | {r['max_abs_difference']:.1e} |")
    result = {"rows": rows, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
              "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "machine": platform.platform(),
              "processor": platform.processor(), "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
