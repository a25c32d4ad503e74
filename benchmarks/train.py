"""Training throughput of the default models for each choice of trained parts.

    python benchmarks/train.py [--steps 4] [--episode-size 8] [--out benchmarks/results/train.json]

For "adapter" (decoder frozen, KV slots + embedding offset train), "lora" (+ LoRA on the memory
path) and "full" (every decoder weight), times optimiser steps of one episode of E Wikipedia /
WordNet sentences on the machine's accelerator if there is one (bf16) or the CPU (fp32), and
prints sentences/s and tokens/s (medians over steps, after one warm-up step). The memory math is
timed separately for exact (SVD) and iterative pseudo-inverses.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from larimar.memory import EpisodicMemory, MemoryConfig
from larimar.model import ConditioningConfig, LarimarConfig, LarimarModel, LossWeights
from larimar.model.assets import load_decoder, load_encoder
from larimar.train.corpus import CorpusConfig, build_corpus, load_sentences
from larimar.train.data import Collator, Example

MODES = {"adapter": 0, "lora": 8, "full": 0}


def sentences(corpus: Path, n: int) -> list[str]:
    if not (corpus / "train.jsonl").is_file():
        build_corpus(CorpusConfig(output_dir=corpus))
    return load_sentences(corpus / "train.jsonl")[:n]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_mode(mode: str, texts: list[str], episode: int, steps: int, device: torch.device) -> dict:
    enc, enc_tok = load_encoder()
    dec, dec_tok = load_decoder()
    cfg = LarimarConfig(conditioning=ConditioningConfig(code_size=384, lora_rank=MODES[mode], trainable=mode))
    model = LarimarModel.from_modules(cfg, enc, enc_tok, dec, dec_tok).to(device).train()
    collate = Collator(enc_tok, dec_tok, episode, 40)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times, tokens = [], []
    for step in range(steps + 1):
        chunk = texts[step * episode : (step + 1) * episode]
        batch = collate([Example(s, s) for s in chunk]).to(device)
        sync(device)
        start = time.perf_counter()
        with autocast:
            out = model(batch, LossWeights())
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        sync(device)
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
            tokens.append(out.tokens)
    t = statistics.median(times)
    return {"mode": mode, "trained_params": sum(p.numel() for p in params), "episode_size": episode,
            "step_s": t, "sentences_per_s": episode / t, "tokens_per_s": statistics.median(tokens) / t}


def bench_memory_math(device: torch.device, episodes: int = 64, items: int = 16) -> list[dict]:
    rows = []
    z = torch.randn(episodes, items, 384, device=device)
    for method in ("exact", "iterative"):
        mem = EpisodicMemory(MemoryConfig(slots=512, code_size=384, pinv=method)).to(device)
        times = []
        for _ in range(4):
            sync(device)
            start = time.perf_counter()
            mem.read(mem.write(z), z)
            sync(device)
            times.append(time.perf_counter() - start)
        rows.append({"pinv": method, "episodes": episodes, "items": items, "write_read_ms": 1e3 * statistics.median(times[1:])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--episode-size", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--corpus", type=Path, default=Path("runs/corpus"))
    parser.add_argument("--out", default="benchmarks/results/train.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    texts = sentences(args.corpus, (args.steps + 1) * args.episode_size)
    rows = [bench_mode(m, texts, args.episode_size, args.steps, device) for m in args.modes]
    memory_rows = bench_memory_math(device)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__, "training": rows, "memory_math": memory_rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"device: {result['device']} ({device.type}, {result['threads']} threads)\n")
    print("| mode | trained params | step s | sentences/s | tokens/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['trained_params'] / 1e6:.1f}M | {r['step_s']:.2f} | {r['sentences_per_s']:.2f} | {r['tokens_per_s']:.0f} |")
    print("\n| pinv | write+read of 64 episodes x 16 facts (ms) |\n|---|---|")
    for r in memory_rows:
        print(f"| {r['pinv']} | {r['write_read_ms']:.1f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
