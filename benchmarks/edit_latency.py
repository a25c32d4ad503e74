"""Latency of editing and querying a Larimar model, against the encoder and the plain decoder,
with few and with many facts in memory.

    python benchmarks/edit_latency.py [--model PATH] [--sizes 16,10000] [--repeats 20]

For each memory size N (facts already written; past the first, filler items written through
`Memory.write_encoded`, see `fill`): per edit, writing one fact (encode + the RLS
update of the newest episode) and forgetting it, against one encoder forward pass of the fact;
per query, the scope decision, scoring one candidate and greedy generation in scope, against
the plain decoder (z=None: transformers' own forward) on the same prompt, and for scoring also
against the plain decoder with the conditioned path's head product (`vocab_product`), like for
like. Scoring and generation are also timed given the
readout (the conditioned decoder alone); the plain decoder generates as many steps as the
generation in scope took (a reply from memory ends where the written fact ends). Ratios are taken within one
run: query time at the largest N against the smallest. Times are medians over repeats after a warm-up call;
the "paired" ratios time the two sides back to back in each repeat and take the median of the ratios.
Prints markdown tables and writes JSON (benchmarks/results/edit_latency.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

import larimar
from larimar.editing.items import Fact, Items
from larimar.model.late_fusion import vocab_product
from larimar.model.text import continuation_nll, encode_pairs, generate

QUERY_FACT = "The mother tongue of Danielle Darrieux is English."
EDIT_FACT = "The Colosseum is located in Berlin."
IN_SCOPE = "The mother tongue of Danielle Darrieux is"
QUESTION = "What is the mother tongue of Danielle Darrieux?"
CANDIDATE = "English"
def fill(memory: larimar.Memory, n: int, seed: int) -> None:
    """Write n filler items through `Memory.write_encoded`: random latents and unit scope keys
    (the costs measured do not depend on the values; encoding 10,000 real facts would take
    minutes on this CPU), with the same episodes and RLS updates as real writes."""
    gen = torch.Generator().manual_seed(seed)
    c, (s, h) = memory.items.latents.shape[1], memory.items.embeddings.shape[1:]
    z = torch.randn(n, c, generator=gen, dtype=torch.float64)
    keys = memory.model.memory.address(z[None])[0]
    scope = torch.nn.functional.normalize(torch.randn(n, s, h, generator=gen, dtype=torch.float64), dim=-1)
    ids = [f"filler-{seed + i}" for i in range(n)]
    now = datetime.now(timezone.utc)
    memory.write_encoded(Items(z, keys, scope, ids), [Fact(i, f"filler fact {i}", now) for i in ids])


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of fn() in milliseconds over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def seconds(fn: Callable[[], Any]) -> float:
    """Wall time of one call of fn, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_ratio(fn: Callable[[], float], base: Callable[[], float], repeats: int) -> float:
    """Median over repeats of fn's time over base's time, the two timed back to back (in turn
    first), so that the machine's load drifts out of each ratio. Each callable returns its own
    time in seconds."""
    fn(), base()
    ratios = []
    for i in range(repeats):
        if i % 2:
            b, a = base(), fn()
        else:
            a, b = fn(), base()
        ratios.append(a / b)
    return statistics.median(ratios)


def edit_latencies(memory: larimar.Memory, repeats: int) -> dict[str, float]:
    """ms of: one encoder pass of a fact, writing it, forgetting it; and the paired ratio of a
    write to an encoder pass."""
    model = memory.model

    def write_timed() -> float:
        start = time.perf_counter()
        fact_id = memory.write([EDIT_FACT])[0]
        elapsed = time.perf_counter() - start
        memory.forget(fact_id)
        return elapsed

    def encode() -> None:
        model.encoder.encode([EDIT_FACT])

    def forget_timed() -> float:
        fact_id = memory.write([EDIT_FACT])[0]
        start = time.perf_counter()
        memory.forget(fact_id)
        return time.perf_counter() - start

    write_timed()
    return {
        "encoder_forward": timed(encode, repeats),
        "write": 1e3 * statistics.median(write_timed() for _ in range(repeats)),
        "forget": 1e3 * statistics.median(forget_timed() for _ in range(repeats)),
        "write_over_encoder_paired": paired_ratio(write_timed, lambda: seconds(encode), repeats),
    }


def query_latencies(lm: larimar.Larimar, memory: larimar.Memory, repeats: int, new_tokens: int) -> dict[str, float]:
    """ms of the scope decision, scoring and generation in scope, and of the plain decoder."""
    decoder, tok = lm.model.decoder, lm.tokenizer
    if not lm.scope(IN_SCOPE, memory).in_scope:
        raise SystemExit(f"the scope detector (threshold {lm.scope_threshold}) does not route the benchmark's query")
    decision = lm.scope(IN_SCOPE, memory)
    z, recalled = decision.z, None if decision.tokens is None else [decision.tokens]
    memory_text = generate(decoder, tok, [IN_SCOPE], z=z, max_new_tokens=new_tokens, candidates=recalled)[0]
    steps = generated_tokens(tok, memory_text, new_tokens)  # the plain decoder is timed for as many steps
    plain_text = generate(decoder, tok, [IN_SCOPE], max_new_tokens=steps)[0]
    return {
        "generated_tokens_plain": generated_tokens(tok, plain_text, steps),
        "generated_tokens_in_scope": steps,
        "scope_decision": timed(lambda: lm.scope(IN_SCOPE, memory), repeats),
        "score_plain_decoder": timed(lambda: continuation_nll(decoder, tok, [IN_SCOPE], [CANDIDATE]), repeats),
        "score_in_scope": timed(lambda: lm.score(IN_SCOPE, [CANDIDATE], memory), repeats),
        "score_plain_few_row_head": timed(lambda: plain_score_few_row_head(decoder, tok, IN_SCOPE, CANDIDATE), repeats),
        "score_in_scope_given_readout": timed(
            lambda: continuation_nll(decoder, tok, [IN_SCOPE], [CANDIDATE], z=z, candidates=recalled), repeats),
        "generate_plain_decoder": timed(lambda: generate(decoder, tok, [IN_SCOPE], max_new_tokens=steps), repeats),
        "generate_in_scope_given_readout": timed(
            lambda: generate(decoder, tok, [IN_SCOPE], z=z, max_new_tokens=new_tokens, candidates=recalled), repeats),
        "generate_in_scope": timed(lambda: lm.generate(IN_SCOPE, memory, max_new_tokens=new_tokens), repeats),
        "ask_in_scope": timed(lambda: lm.ask(QUESTION, memory, max_new_tokens=new_tokens), repeats),
        "score_in_scope_over_plain_paired": paired_ratio(
            lambda: seconds(lambda: lm.score(IN_SCOPE, [CANDIDATE], memory)),
            lambda: seconds(lambda: continuation_nll(decoder, tok, [IN_SCOPE], [CANDIDATE])), repeats),
        "score_in_scope_over_plain_few_row_head_paired": paired_ratio(
            lambda: seconds(lambda: lm.score(IN_SCOPE, [CANDIDATE], memory)),
            lambda: seconds(lambda: plain_score_few_row_head(decoder, tok, IN_SCOPE, CANDIDATE)), repeats),
        "generate_in_scope_over_plain_paired": paired_ratio(
            lambda: seconds(lambda: lm.generate(IN_SCOPE, memory, max_new_tokens=new_tokens)),
            lambda: seconds(lambda: generate(decoder, tok, [IN_SCOPE], max_new_tokens=steps)), repeats),
    }


def plain_score_few_row_head(decoder: Any, tokenizer: Any, prompt: str, continuation: str) -> float:
    """The plain decoder's score of a continuation with the head product the conditioned path
    uses (`vocab_product`) instead of transformers' own: the like-for-like baseline."""
    (ids, start), = encode_pairs(tokenizer, [prompt], [continuation])
    body, head = decoder._body_and_head()
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        hidden = body(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state[0, start - 1 : -1]
        logp = torch.log_softmax(vocab_product(hidden, head.weight), -1)
    return -logp.gather(-1, input_ids[0, start:, None]).mean().item()


def generated_tokens(tokenizer: Any, text: str, budget: int) -> int:
    """Decoder steps a greedy generation took: its text's tokens, plus the end token when it
    stopped before the budget."""
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return min(budget, n + 1) if n < budget else budget


PLOTTED = (("write_over_encoder_paired", "edit", "write /\none encoder pass", 1.2),
           ("score_in_scope_over_plain_paired", "query", "score in scope /\nplain decoder", 1.1),
           ("generate_in_scope_over_plain_paired", "query", "generate in scope /\nplain decoder", 1.1))
"""The paired ratios drawn by `plot`, with the issue's target for each."""


def plot(result: dict, path: Path) -> None:
    """The paired ratios at each memory size, beside their targets, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(sizes)
    for j, n in enumerate(sizes):
        row = result["rows_ms"][str(n)]  # JSON keys
        values = [row[group][key] for key, group, _, _ in PLOTTED]
        bars = ax.bar([i + (j - (len(sizes) - 1) / 2) * width for i in range(len(PLOTTED))], values, width,
                      label=f"{n:,} facts")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    for i, (_, _, _, target) in enumerate(PLOTTED):
        ax.hlines(target, i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                  label="target" if i == 0 else None)
    ax.set_xticks(range(len(PLOTTED)), [label for _, _, label, _ in PLOTTED], fontsize=8)
    ax.set_ylim(0.8, max(1.3, ax.get_ylim()[1]))
    ax.set_ylabel("paired ratio (median over repeats)")
    ax.set_title("cost of an edit and of a query in scope")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="saved Larimar model (default: built-in)")
    parser.add_argument("--sizes", default="16,10000", help="facts in memory, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=12, help="tokens generated per query at most")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edit_latency.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/img/edit_latency.png"), help="PNG of the ratios")
    parser.add_argument("--replot", action="store_true", help="only draw --plot from the JSON at --out")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text()), args.plot)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    lm = larimar.load(args.model)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    memory, written, rows = lm.new_memory(), 0, {}
    memory.write([QUERY_FACT])
    for n in sizes:
        start = time.perf_counter()
        for i in range(written, n - 1, 1000):
            fill(memory, min(1000, n - 1 - i), seed=i)
        written = max(written, n - 1)
        print(f"{len(memory)} facts in {memory.episodes} episodes (filled in {time.perf_counter() - start:.0f} s)",
              flush=True)
        rows[n] = {"edit": edit_latencies(memory, args.repeats), "query": query_latencies(lm, memory, args.repeats, args.new_tokens)}

    print("\n| facts | write ms | x encoder pass | paired | forget ms | scope ms | score in scope x plain | paired "
          "| the same given the readout | generate in scope x plain, same steps | paired | the same given the readout "
          "| ask ms | score in scope x plain with the same head product, paired |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in rows.items():
        e, q = r["edit"], r["query"]
        r["ratios"] = {"write_over_encoder": e["write"] / e["encoder_forward"],
                       "score_in_scope_over_plain": q["score_in_scope"] / q["score_plain_decoder"],
                       "score_given_readout_over_plain": q["score_in_scope_given_readout"] / q["score_plain_decoder"],
                       "generate_in_scope_over_plain": q["generate_in_scope"] / q["generate_plain_decoder"],
                       "generate_given_readout_over_plain": q["generate_in_scope_given_readout"]
                       / q["generate_plain_decoder"]}
        x = r["ratios"]
        print(f"| {n} | {e['write']:.1f} | {x['write_over_encoder']:.2f} | {e['write_over_encoder_paired']:.2f} | "
              f"{e['forget']:.1f} | {q['scope_decision']:.1f} | {x['score_in_scope_over_plain']:.2f} | "
              f"{q['score_in_scope_over_plain_paired']:.2f} | {x['score_given_readout_over_plain']:.2f} | "
              f"{x['generate_in_scope_over_plain']:.2f} | {q['generate_in_scope_over_plain_paired']:.2f} | "
              f"{x['generate_given_readout_over_plain']:.2f} | {q['ask_in_scope']:.0f} | "
              f"{q['score_in_scope_over_plain_few_row_head_paired']:.2f} |")
    small, large = rows[sizes[0]]["query"], rows[sizes[-1]]["query"]
    ratios = {k: large[k] / small[k] for k in ("scope_decision", "score_in_scope", "generate_in_scope", "ask_in_scope")}
    print(f"\nquery time at {sizes[-1]} facts / at {sizes[0]}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    result = {
        "model": str(args.model or "built-in"), "sizes": sizes, "repeats": args.repeats, "new_tokens": args.new_tokens,
        "torch_threads": torch.get_num_threads(), "machine": platform.platform(), "processor": platform.processor(),
        "torch": torch.__version__, "episode_items": memory.episode_items, "rows_ms": rows,
        "query_large_over_small": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(json.loads(args.out.read_text()), args.plot)
    print(f"\nwrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
