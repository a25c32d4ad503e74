"""Latency and throughput of the episodic memory's write, read and sequential update.

    python benchmarks/memory.py [--quick] [--threads N] [--out benchmarks/results/memory.json]

Prints a markdown table and writes JSON. Times are medians over repeats; GFLOP/s use the
operation counts below and stand next to the machine's measured float32 matmul rate.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from larimar.memory import EpisodicMemory, MemoryConfig

SLOTS = (64, 512, 2048)
CODES = (384, 768)
ITEMS = (1, 16, 512)
BATCHES = (1, 16)
METHODS = ("exact", "iterative")
UPDATE_ITEMS = 8  # items timed per sequential-update measurement (the cost per item is constant)


def timed(fn, min_time: float = 0.3, min_reps: int = 3, max_reps: int = 50) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    times: list[float] = []
    while len(times) < min_reps or (sum(times) < min_time and len(times) < max_reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(n: int = 1024) -> float:
    """Measured float32 GFLOP/s of an n x n matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: a @ b) / 1e9


def svd_pinv_flops(m: int, n: int) -> float:
    """Textbook count for a thin SVD (Golub-Van Loan) plus forming V S^-1 U^T."""
    m, n = max(m, n), min(m, n)
    return 4 * m * m * n + 8 * m * n * n + 9 * n**3 + 2 * m * n * n


def pinv_flops(m: int, n: int, method: str, steps: int) -> float:
    if method == "exact":
        return svd_pinv_flops(m, n)
    small, big = min(m, n), max(m, n)
    return steps * (4 * small * small * big + small * big)


def write_flops(b: int, e: int, k: int, c: int, method: str, steps: int) -> float:
    keys = 2 * e * c * k
    return b * (keys + pinv_flops(e, k, method, steps) + 2 * k * e * c)


def read_flops(b: int, q: int, k: int, c: int, method: str, steps: int) -> float:
    return b * (pinv_flops(k, c, method, steps) + 4 * q * c * k)


def update_flops(b: int, k: int, c: int) -> float:
    """Per item: two K x K mat-vecs, the rank-2 and rank-1 outer updates, the M update and key."""
    return b * (10 * k * k + 6 * k * c)


def bench_case(b: int, e: int, k: int, c: int, method: str) -> dict:
    mem = EpisodicMemory(MemoryConfig(slots=k, code_size=c, pinv=method)).eval()
    z = torch.randn(b, e, c)
    steps = mem.config.pinv_steps
    with torch.no_grad():
        state = mem.write(z)
        t_write = timed(lambda: mem.write(z))
        t_read = timed(lambda: mem.read(state, z))
    return {
        "B": b, "E": e, "K": k, "C": c, "pinv": method,
        "write_ms": 1e3 * t_write,
        "write_items_per_s": b * e / t_write,
        "write_gflops": write_flops(b, e, k, c, method, steps) / t_write / 1e9,
        "read_ms": 1e3 * t_read,
        "read_queries_per_s": b * e / t_read,
        "read_gflops": read_flops(b, e, k, c, method, steps) / t_read / 1e9,
    }


def bench_update(b: int, k: int, c: int) -> dict:
    mem = EpisodicMemory(MemoryConfig(slots=k, code_size=c)).eval()
    z = torch.randn(b, UPDATE_ITEMS, c)
    with torch.no_grad():
        start = mem.update(mem.empty(b), torch.randn(b, 4, c))

        def run():
            state = start
            for i in range(UPDATE_ITEMS):
                state = mem.update(state, z[:, i : i + 1])

        t = timed(run) / UPDATE_ITEMS
    return {
        "B": b, "K": k, "C": c,
        "update_ms_per_item": 1e3 * t,
        "update_items_per_s": b / t,
        "update_gflops": update_flops(b, k, c) / t / 1e9,
    }


def thousand_updates(k: int = 512, c: int = 384, n: int = 1000, repeats: int = 3) -> dict:
    """Wall time of n sequential single-item updates into one memory (the issue's target)."""
    mem = EpisodicMemory(MemoryConfig(slots=k, code_size=c)).eval()
    z = torch.randn(n, 1, 1, c)
    times = []
    with torch.no_grad():
        mem.update(mem.empty(1), z[0])  # warm-up, caches the reference pseudo-inverse
        for _ in range(repeats):
            state = mem.empty(1)
            start = time.perf_counter()
            for i in range(n):
                state = mem.update(state, z[i])
            times.append(time.perf_counter() - start)
    return {"K": k, "C": c, "n": n, "seconds_median": statistics.median(times), "seconds_all": times}


def markdown(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[col]) for col in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset of the grid")
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = itertools.product(
        BATCHES, ITEMS[:2] if args.quick else ITEMS, SLOTS[:2] if args.quick else SLOTS, CODES[:1] if args.quick else CODES, METHODS
    )
    rate = matmul_rate()
    cases = [bench_case(*g) for g in grid]
    updates = [bench_update(b, k, c) for b in BATCHES for k in (SLOTS[:2] if args.quick else SLOTS) for c in CODES]
    headline = thousand_updates()
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "matmul_gflops_fp32": rate},
        "write_read": cases, "update": updates, "thousand_updates": headline,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"float32 matmul rate on this machine: {rate:.1f} GFLOP/s ({torch.get_num_threads()} threads)\n")
    print(markdown(cases, ["B", "E", "K", "C", "pinv", "write_ms", "write_gflops", "read_ms", "read_gflops"]))
    print()
    print(markdown(updates, ["B", "K", "C", "update_ms_per_item", "update_items_per_s", "update_gflops"]))
    print(f"\n{headline['n']} sequential single-item updates, K={headline['K']}, C={headline['C']}: "
          f"{headline['seconds_median']:.3f} s (median of {len(headline['seconds_all'])})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
