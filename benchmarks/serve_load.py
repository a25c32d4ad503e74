"""Load on the memory service over loopback: durable writes against in-process writes, and asks.

    python benchmarks/serve_load.py [--model PATH] [--db URL] [--batches 1 32] [--sizes 8 512]
                                    [--writes 12] [--clients 1 8] [--requests-per-client 4] [--repeats 3]
                                    [--max-seconds 90] [--out benchmarks/results/serve_load.json]

Starts `larimar serve` on 127.0.0.1 (a free port, a temporary SQLite database, or `--db`, e.g. a
postgresql:// URL) unless `--url` names a loopback server already running.

Writes, in one run and on one machine: for each memory size in `--sizes` (facts already in the
memory) and each batch size in `--batches`, one client sends `--writes` writes of that many new
facts, each acknowledged only once durable; the same writes are done in this process on a
`Memory` of the same size without any storage (the model loaded here too). The ratio durable /
in-process (facts per second, from the median write time of each; the two alternate write by
write so both see the same machine load; the in-process ones run in a worker thread, as the
server's do: on a loaded 2-core machine torch ops called from the main thread were measured up to
18x slower) is what storage and HTTP cost; the encoder is the floor of both.

Asks: for each client count N in `--clients`, N threads each open a kept-alive connection, start
together and send `--requests-per-client` in-scope asks generating `--new-tokens` tokens. The
cells run in turns (1, 8, 1, 8, ... `--repeats` times), so the machine's load drifts over both
alike; each turn's ratio is N clients' throughput over one client's in that turn, and the
median over turns is reported. Every cell is bounded by `--max-seconds`. Prints markdown tables
and writes JSON.
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
from concurrent.futures import ThreadPoolExecutor
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
    turn: int
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
             max_seconds: float, turn: int = 0) -> Cell:
    """N clients, each sending up to `per_client` requests until `max_seconds` pass; they open
    their connections first and start together."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    deadline = time.perf_counter() + max_seconds

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=max_seconds + 60) as http:
            http.get("/health")  # the connection is open before the clock starts
            ready.wait()
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
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = [1000 * x for x in latencies] or [float("nan")]
    return Cell(op, clients, turn, len(latencies), errors[0], round(statistics.median(ms), 1),
                round(percentile(ms, 99), 1), round(len(latencies) / wall, 2), round(wall, 2))


def new_facts(tag: str, n: int, batch: int) -> list[str]:
    return [f"Load test fact {tag} number {n} part {j} is about Paris." for j in range(batch)]


def write_request(batch: int, tag: str) -> Request:
    def write(http: httpx.Client, n: int) -> httpx.Response:
        return http.post("/facts", json={"facts": new_facts(tag, n, batch)})

    return write


def ask_request(new_tokens: int) -> Request:
    def ask(http: httpx.Client, n: int) -> httpx.Response:
        prompt = FACTS[(n + n // 1_000_000) % len(FACTS)].rsplit(" ", 1)[0]  # clients ask different facts
        return http.post("/ask", json={"prompt": prompt, "max_new_tokens": new_tokens})

    return ask


@dataclass(frozen=True)
class WriteRatio:
    """Durable writes over HTTP against the same writes in process, without storage."""

    batch: int
    memory_facts: int
    writes: int
    in_process_facts_per_s: float
    durable_facts_per_s: float
    ratio: float
    durable_p50_ms: float


def prefill(size: int) -> list[str]:
    return [FACTS[i % len(FACTS)] if i < len(FACTS) else f"Prefilled fact number {i}." for i in range(size)]


def in_process_memory(lm: object, size: int) -> object:
    """A `Memory` (no storage) holding `size` facts, like the served one."""
    memory = lm.new_memory()  # type: ignore[attr-defined]
    facts = prefill(size)
    for start in range(0, size, 64):
        memory.write(facts[start : start + 64])
    return memory


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--url must be a loopback address (127.0.0.1); got {host}")


def ratio_table(ratios: list[WriteRatio]) -> str:
    lines = ["| write batch | memory facts | writes | in process facts/s | durable facts/s | durable / in process | p50 ms |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.batch} | {r.memory_facts} | {r.writes} | {r.in_process_facts_per_s:.1f} | "
              f"{r.durable_facts_per_s:.1f} | **{r.ratio:.2f}x** | {r.durable_p50_ms:.1f} |" for r in ratios]
    return "\n".join(lines)


def turn_ratios(cells: list[Cell]) -> dict[int, list[float]]:
    """Ask throughput with N clients over one client's in the same turn, for each turn."""
    turns: dict[int, dict[int, float]] = {}
    for c in cells:
        if c.op == "ask":
            turns.setdefault(c.turn, {})[c.clients] = c.throughput_rps
    ratios: dict[int, list[float]] = {}
    for rates in turns.values():
        if rates.get(1):
            for n, rate in rates.items():
                ratios.setdefault(n, []).append(round(rate / rates[1], 2))
    return ratios


def ask_ratios(cells: list[Cell]) -> dict[int, float]:
    """The median over turns of `turn_ratios`."""
    return {n: round(statistics.median(r), 2) for n, r in turn_ratios(cells).items()}


def table(cells: list[Cell]) -> str:
    lines = ["| op | turn | clients | requests | errors | p50 ms | p99 ms | throughput req/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {c.op} | {c.turn} | {c.clients} | {c.requests} | {c.errors} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | "
              f"{c.throughput_rps:.2f} |" for c in cells]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="saved Larimar model (default: built-in)")
    parser.add_argument("--url", default=None, help="a running loopback server instead of starting one")
    parser.add_argument("--db", default=None, help="database of the started server (default: a temporary SQLite file)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="facts per write")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 512], help="facts in the memory before the writes")
    parser.add_argument("--writes", type=int, default=12, help="writes per (batch, size) cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="turns of the ask cells (median ratio over turns)")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="stop sending after this long, per cell")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per ask")
    parser.add_argument("--skip-asks", action="store_true", help="measure writes only")
    parser.add_argument("--skip-writes", action="store_true", help="measure asks only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = parser.parse_args()

    import larimar

    lm = None if args.skip_writes else larimar.load(args.model)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        server = None
        if args.url is None:
            server = ServerProcess(args.model, args.db or Path(tmp) / "load.db", Path(tmp) / "server.log", threads=None)
            server.start(timeout=300)
        url = args.url or server.url  # type: ignore[union-attr]
        check_loopback(url)
        try:
            ratios = [] if args.skip_writes else measure_writes(url, lm, args)
            cells = [] if args.skip_asks else measure_asks(url, args)
        finally:
            if server is not None:
                server.stop()
    print(ratio_table(ratios))
    if cells:
        print()
        print(table(cells))
        turns = turn_ratios(cells)
        print("ask throughput over one client (median over turns; each turn): " + ", ".join(
            f"{n} clients {r:.2f}x ({' / '.join(f'{x:.2f}' for x in turns[n])})" for n, r in ask_ratios(cells).items()))
    result = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
              "writes": [asdict(r) for r in ratios], "cells": [asdict(c) for c in cells],
              "ask_ratios": ask_ratios(cells), "ask_turn_ratios": turn_ratios(cells)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def new_memory(url: str, size: int) -> tuple[str, dict[str, str]]:
    created = httpx.post(f"{url}/memories", json={"name": f"load {size}"}, timeout=60).json()
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    memory_url = f"{url}/memories/{created['id']}"
    facts = prefill(size)
    for start in range(0, len(facts), 64):
        httpx.post(f"{memory_url}/facts", json={"facts": facts[start : start + 64]}, headers=headers,
                   timeout=300).raise_for_status()
    return memory_url, headers


def measure_writes(url: str, lm: object, args: argparse.Namespace) -> list[WriteRatio]:
    """Durable and in-process writes alternate, one of each in turn, so both see the same machine load;
    rates are from the median time of each."""
    ratios = []
    worker = ThreadPoolExecutor(max_workers=1)  # in-process writes run in a worker thread, as the server's do
    for size in args.sizes:
        memory_url, headers = new_memory(url, size)
        local = worker.submit(in_process_memory, lm, size).result()
        for batch in args.batches:
            tag = f"{time.time_ns()}"
            durable_s: list[float] = []
            local_s: list[float] = []
            with httpx.Client(base_url=memory_url, headers=headers, timeout=300) as http:
                write_request(batch, "warm" + tag)(http, 0).raise_for_status()
                worker.submit(local.write, new_facts("warm" + tag, 0, batch)).result()  # type: ignore[attr-defined]
                deadline = time.perf_counter() + args.max_seconds
                for n in range(args.writes):
                    start = time.perf_counter()
                    write_request(batch, tag)(http, n).raise_for_status()
                    durable_s.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    worker.submit(local.write, new_facts("local" + tag, n, batch)).result()  # type: ignore[attr-defined]
                    local_s.append(time.perf_counter() - start)
                    if time.perf_counter() > deadline:
                        break
            durable, in_process = batch / statistics.median(durable_s), batch / statistics.median(local_s)
            ratio = WriteRatio(batch, size, len(durable_s), round(in_process, 2), round(durable, 2),
                               round(durable / in_process, 3), round(1000 * statistics.median(durable_s), 1))
            print(f"writes: {ratio}", file=sys.stderr)
            ratios.append(ratio)
    worker.shutdown()
    return ratios


def measure_asks(url: str, args: argparse.Namespace) -> list[Cell]:
    memory_url, headers = new_memory(url, len(FACTS))
    send = ask_request(args.new_tokens)
    send(httpx.Client(base_url=memory_url, headers=headers, timeout=120), 0)  # warm-up
    cells = []
    for turn in range(args.repeats):
        for clients in args.clients:
            cell = run_cell(memory_url, headers, "ask", send, clients, args.requests_per_client, args.max_seconds, turn)
            print(f"ask x{clients}: {cell}", file=sys.stderr)
            cells.append(cell)
    return cells


if __name__ == "__main__":
    main()
