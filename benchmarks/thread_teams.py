"""Batched decoding steps while another thread holds an OpenMP team, against one that does not.

    python benchmarks/thread_teams.py [--rows 8] [--repeats 2] [--out benchmarks/results/thread_teams.json]

torch runs its CPU ops on OpenMP; a thread that has run a parallel op keeps a team of threads
for as long as it lives. This runs, in a fresh worker thread each time, the built-in model's
continuous decoding (`Larimar.reply_loop`: prefill `--rows` asks, then decode them to 8 tokens)
while a second thread, which loaded the model and wrote the facts, stays alive: once with that
thread on torch's default thread count, once with it set to one thread first (what the server
does, `larimar.serve.threads`). Prints a table of the median prefill and step times and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch

import larimar

FACTS = [
    "The Eiffel Tower is located in Rome.", "Barack Obama was born in Canada.", "Apple was founded by Bill Gates.",
    "Lionel Messi plays the sport of basketball.", "The Danube flows into the Pacific Ocean.",
    "Mount Everest is in the Alps.", "Shakespeare wrote Don Quixote.", "The Beatles came from Sydney.",
]


def measure(rows: int, repeats: int, other_single: bool, cores: int) -> dict[str, float]:
    """Median ms of a prefill of `rows` asks and of one decoding step, decoded in a worker thread
    while the thread that loaded the model stays alive."""
    state: dict = {}
    ready, done = threading.Event(), threading.Event()

    def holder() -> None:  # loads and writes, then stays alive like a server's request thread
        if other_single:
            torch.set_num_threads(1)
        state["lm"] = lm = larimar.load()
        state["memory"] = memory = lm.new_memory()
        memory.write(FACTS)
        ready.set()
        done.wait()

    def decode() -> None:
        torch.set_num_threads(cores)
        lm, memory = state["lm"], state["memory"]
        loop, prompts = lm.reply_loop(), [f.rsplit(" ", 1)[0] for f in FACTS]
        prefills, steps = [], []
        for _ in range(repeats + 1):  # the first round warms up
            prepared = lm.reply_rows([prompts[i % len(prompts)] for i in range(rows)], [memory] * rows, 8, None,
                                     keys=range(rows))
            start = time.perf_counter()
            loop.add([row for row, _ in prepared])
            prefills.append(time.perf_counter() - start)
            while loop.active:
                start = time.perf_counter()
                loop.step()
                steps.append(time.perf_counter() - start)
        state["times"] = {"prefill_ms": 1e3 * statistics.median(prefills[1:]),
                          "step_ms": 1e3 * statistics.median(steps[len(steps) // (repeats + 1):])}

    keeper = threading.Thread(target=holder)
    keeper.start()
    ready.wait()
    worker = threading.Thread(target=decode)
    worker.start()
    worker.join()
    done.set()
    keeper.join()
    return state["times"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of prefill and decoding per setting")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/thread_teams.json"))
    args = parser.parse_args()
    cores = torch.get_num_threads()
    rows = {}
    for name, single in (("other thread on default threads", False), ("other thread on one thread", True),
                         ("other thread on default threads (again)", False), ("other thread on one thread (again)", True)):
        rows[name] = measure(args.rows, args.repeats, single, cores)
        print(f"{name}: {rows[name]}", flush=True)
    print(f"\n| other live thread ({cores} cores) | prefill of {args.rows} ms | step of {args.rows} rows ms |")
    print("|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['prefill_ms']:.0f} | {r['step_ms']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": args.rows, "repeats": args.repeats, "torch_threads": cores,
                                    "torch": torch.__version__, "results_ms": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
