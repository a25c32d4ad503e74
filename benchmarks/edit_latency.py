"""Latency of editing and querying a Larimar model, against the encoder and the plain decoder.

    python benchmarks/edit_latency.py [--model PATH] [--repeats 20] [--out benchmarks/results/edit_latency.json]

Per edit: encode + sequential RLS write of one fact (and its parts: the encoder pass that yields
latent and scope embedding, and the RLS update), and forgetting it; the reference is one
encoder forward pass of the fact. Per query: scoring one candidate and greedy generation,
with no memory, out of scope, and in scope; the reference is the plain decoder (z=None).
Times are medians over repeats after one warm-up call; the memory holds `--facts` facts.
Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

import larimar
from larimar.editing.encoding import encode_texts
from larimar.memory import pinv
from larimar.model.text import continuation_nll, generate

FACTS = [
    "The Eiffel Tower is located in Rome.", "Barack Obama was born in Canada.",
    "Apple was founded by Bill Gates.", "Lionel Messi plays the sport of basketball.",
    "The Danube flows into the Pacific Ocean.", "Mount Everest is in the Alps.",
    "Shakespeare wrote Don Quixote.", "The Beatles came from Sydney.",
]
QUERY_FACT = "The mother tongue of Danielle Darrieux is English."
EDIT_FACT = "The Colosseum is located in Berlin."
IN_SCOPE = "The mother tongue of Danielle Darrieux is"
OUT_OF_SCOPE = "The largest planet in the solar system is"
CANDIDATE = "English"


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of fn() in milliseconds over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def edit_latencies(lm: larimar.Larimar, memory: larimar.Memory, repeats: int) -> dict[str, float]:
    """ms of: one encoder pass, the editing encoder pass, the RLS update, write, forget."""
    model = memory.model
    z, _ = encode_texts(model.encoder, [EDIT_FACT])
    keys = model.memory.address(z[None])

    def write_then_forget() -> None:
        memory.forget(memory.write([EDIT_FACT])[0])

    def write_timed() -> float:
        start = time.perf_counter()
        fact_id = memory.write([EDIT_FACT])[0]
        elapsed = time.perf_counter() - start
        memory.forget(fact_id)
        return elapsed

    def forget_timed() -> float:
        fact_id = memory.write([EDIT_FACT])[0]
        start = time.perf_counter()
        memory.forget(fact_id)
        return time.perf_counter() - start

    write_then_forget()
    return {
        "encoder_forward": timed(lambda: model.encoder.encode([EDIT_FACT]), repeats),
        "encode_latent_and_embedding": timed(lambda: encode_texts(model.encoder, [EDIT_FACT]), repeats),
        "rls_update": timed(lambda: model.memory.update(memory.state, z[None], keys=keys), repeats),
        "write": 1e3 * statistics.median(write_timed() for _ in range(repeats)),
        "forget": 1e3 * statistics.median(forget_timed() for _ in range(repeats)),
    }


def query_latencies(lm: larimar.Larimar, memory: larimar.Memory, repeats: int, new_tokens: int) -> dict[str, Any]:
    """ms of scoring and generation: plain decoder, no memory, out of scope, in scope."""
    decoder, tok = lm.model.decoder, lm.tokenizer
    if not lm.scope(IN_SCOPE, memory).in_scope or lm.scope(OUT_OF_SCOPE, memory).in_scope:
        raise SystemExit(f"the scope detector (threshold {lm.scope_threshold}) misroutes the benchmark's queries")
    cfg = memory.model.memory.config
    m = memory.state.memory[0]  # (K, C)
    rows: dict[str, Any] = {
        "memory_pinv_once_per_change": timed(lambda: pinv(m, cfg.pinv, cfg.pinv_steps, cfg.pinv_rtol), repeats),
        "scope_decision": timed(lambda: lm.scope(IN_SCOPE, memory), repeats),
        "score_plain_decoder": timed(lambda: continuation_nll(decoder, tok, [IN_SCOPE], [CANDIDATE]), repeats),
        "score_no_memory": timed(lambda: lm.score(IN_SCOPE, [CANDIDATE]), repeats),
        "score_out_of_scope": timed(lambda: lm.score(OUT_OF_SCOPE, [CANDIDATE], memory), repeats),
        "score_in_scope": timed(lambda: lm.score(IN_SCOPE, [CANDIDATE], memory), repeats),
    }
    z = lm.scope(IN_SCOPE, memory).z
    plain = lambda: generate(decoder, tok, [IN_SCOPE], max_new_tokens=new_tokens)  # noqa: E731
    rows["generate_plain_decoder"] = timed(plain, repeats)
    rows["generate_in_scope"] = timed(lambda: lm.generate(IN_SCOPE, memory, max_new_tokens=new_tokens), repeats)
    rows["generated_tokens"] = {
        "plain": len(tok(plain()[0])["input_ids"]),
        "in_scope": len(tok(generate(decoder, tok, [IN_SCOPE], z=z, max_new_tokens=new_tokens)[0])["input_ids"]),
    }
    return rows


def print_table(edit: dict[str, float], query: dict[str, Any]) -> None:
    enc = edit["encoder_forward"]
    print("| per edit | ms | x encoder forward |\n|---|---:|---:|")
    for name, ms in edit.items():
        print(f"| {name} | {ms:.1f} | {ms / enc:.2f} |")
    base_score, base_gen = query["score_plain_decoder"], query["generate_plain_decoder"]
    print("\n| per query | ms | x plain decoder |\n|---|---:|---:|")
    for name, ms in query.items():
        if name == "generated_tokens":
            continue
        base = base_gen if name.startswith("generate") else base_score  # pinv, scope: vs scoring
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} |")
    print(f"\ngenerated tokens: {query['generated_tokens']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="saved Larimar model (default: built-in)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--facts", type=int, default=len(FACTS), help="facts already in the memory")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per query")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edit_latency.json"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    lm = larimar.load(args.model)
    memory = lm.new_memory()
    memory.write((FACTS * (args.facts // len(FACTS) + 1))[: args.facts])
    memory.write([QUERY_FACT])  # answers the in-scope query; the timed edits add and remove EDIT_FACT
    edit = edit_latencies(lm, memory, args.repeats)
    query = query_latencies(lm, memory, args.repeats, args.new_tokens)
    print_table(edit, query)
    result = {
        "model": str(args.model or "built-in"), "config": lm.model.config.to_dict(), "facts_in_memory": len(memory),
        "repeats": args.repeats, "new_tokens": args.new_tokens, "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
        "per_edit_ms": edit, "per_query_ms": query,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
