"""Load on the memory service over loopback: latency (p50/p99) and throughput of ask and write.

    python benchmarks/serve_load.py [--model PATH] [--clients 1 8 32] [--requests-per-client 4]
                                    [--max-seconds 90] [--out benchmarks/results/serve_load.json]

Starts `larimar serve` on 127.0.0.1 (a free port, a temporary database) unless `--url` names a
loopback server already running. It creates one memory holding `--facts` facts; then for each
client count N, N threads each send `--requests-per-client` requests (a write of one new fact,
or an in-scope ask generating `--new-tokens` tokens), every one over a kept-alive connection.
The load is bounded twice: by that count and by `--max-seconds` per cell, after which clients
stop sending. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serve.server_process import ServerProcess  # noqa: E402  (the same launcher the crash test uses)

FACTS = [
    "The Eiffel Tower is located in Rome.", "Barack Obama was born in Canada.",
    "Apple was founded by Bill Gates.", "Lionel Messi plays the sport of basketball.",
    "The Danube flows into the Pacific Ocean.", "Mount Everest is in the Alps.",
    "Shakespeare wrote Don Quixote.", "The Beatles came from Sydney.",
]
Request = Callable[[httpx.Client, int], httpx.Response]


@dataclass(frozen=True)
class Cell:
    """One (operation, clients) measurement."""

    op: str
    clients: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    throughput_rps: float
    wall_s: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_cell(url: str, headers: dict[str, str], op: str, send: Request, clients: int, per_client: int,
             max_seconds: float) -> Cell:
    """N clients, each sending up to `per_client` requests until `max_seconds` pass."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=max_seconds + 60) as http:
            for i in range(per_client):
                if time.perf_counter() > deadline:
                    return
                start = time.perf_counter()
                ok = send(http, worker * 1_000_000 + i).is_success
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed) if ok else None
                    errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = [1000 * x for x in latencies] or [float("nan")]
    return Cell(op, clients, len(latencies), errors[0], round(statistics.median(ms), 1), round(percentile(ms, 99), 1),
                round(len(latencies) / wall, 2), round(wall, 2))


def requests(new_tokens: int, tag: str) -> dict[str, Request]:
    """The two measured requests: write one new fact; ask an in-scope prompt."""
    def write(http: httpx.Client, n: int) -> httpx.Response:
        return http.post("/facts", json={"facts": [f"Load test fact {tag} number {n} is about Paris."]})

    def ask(http: httpx.Client, n: int) -> httpx.Response:
        prompt = FACTS[n % len(FACTS)].rsplit(" ", 1)[0]
        return http.post("/ask", json={"prompt": prompt, "max_new_tokens": new_tokens})

    return {"write": write, "ask": ask}


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--url must be a loopback address (127.0.0.1); got {host}")


def table(cells: list[Cell]) -> str:
    lines = ["| op | clients | requests | errors | p50 ms | p99 ms | throughput req/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {c.op} | {c.clients} | {c.requests} | {c.errors} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | {c.throughput_rps:.2f} |"
              for c in cells]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="saved Larimar model (default: built-in)")
    parser.add_argument("--url", default=None, help="a running loopback server instead of starting one")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=90.0, help="stop sending after this long, per cell")
    parser.add_argument("--facts", type=int, default=len(FACTS), help="facts in the memory before the load")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per ask")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        server = None
        if args.url is None:
            server = ServerProcess(args.model, Path(tmp) / "load.db", Path(tmp) / "server.log", threads=None)
            server.start(timeout=300)
        url = args.url or server.url  # type: ignore[union-attr]
        check_loopback(url)
        try:
            cells = measure(url, args)
        finally:
            if server is not None:
                server.stop()
    print(table(cells))
    result = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
              "cells": [asdict(c) for c in cells]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def measure(url: str, args: argparse.Namespace) -> list[Cell]:
    created = httpx.post(f"{url}/memories", json={"name": "load"}, timeout=60).json()
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    memory_url = f"{url}/memories/{created['id']}"
    prefill = [FACTS[i % len(FACTS)] if i < len(FACTS) else f"Prefilled fact number {i}." for i in range(args.facts)]
    httpx.post(f"{memory_url}/facts", json={"facts": prefill}, headers=headers, timeout=120).raise_for_status()
    send = requests(args.new_tokens, tag=str(time.time_ns()))
    send["ask"](httpx.Client(base_url=memory_url, headers=headers, timeout=120), 0)  # warm-up
    cells = []
    for op in ("write", "ask"):
        for clients in args.clients:
            cell = run_cell(memory_url, headers, op, send[op], clients, args.requests_per_client, args.max_seconds)
            print(f"{op} x{clients}: {cell}", file=sys.stderr)
            cells.append(cell)
    return cells


if __name__ == "__main__":
    main()
