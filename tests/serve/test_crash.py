"""kill -9 a real server during a stream of writes and forgets; after a restart on the same
database every acknowledged change is there, and the fact log, the memory state and the answers
agree. Twenty kills in a row, on one growing memory (snapshots every 5 changes, so kills land
around snapshots and log replays too); eight on PostgreSQL."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import larimar
from tests.serve.server_process import ServerProcess

RUNS = 20
RUNS_POSTGRES = 8
WRITERS = 3


@dataclass
class Ledger:
    """What the clients saw acknowledged (and what was in flight when the server died)."""

    written: dict[str, str] = field(default_factory=dict)
    """fact id -> text, for every acknowledged write."""
    forgotten: set[str] = field(default_factory=set)
    """ids whose forget was acknowledged."""
    uncertain: set[str] = field(default_factory=set)
    """ids whose forget was sent but not acknowledged: either state is fine."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acks(self) -> int:
        with self.lock:
            return len(self.written) + len(self.forgotten)


def _writer(url: str, headers: dict[str, str], ledger: Ledger, run: int, worker: int, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, headers=headers, timeout=10.0) as client:
        for i in range(10_000):
            try:
                _one_change(client, ledger, rng, f"{run} {worker} {i}")
            except httpx.TransportError:
                return  # the server is gone


def _one_change(client: httpx.Client, ledger: Ledger, rng: random.Random, tag: str) -> None:
    mine = [fid for fid in ledger.written if fid not in ledger.forgotten and fid not in ledger.uncertain]
    if mine and rng.random() < 0.2:
        victim = rng.choice(mine)
        with ledger.lock:
            ledger.uncertain.add(victim)
        response = client.delete(f"/facts/{victim}")
        if response.status_code == 200:
            with ledger.lock:
                ledger.uncertain.discard(victim)
                ledger.forgotten.add(victim)
        return
    texts = [f"The cat sat on the mat {tag} {j}." for j in range(rng.randint(1, 3))]
    response = client.post("/facts", json={"facts": texts})
    assert response.status_code == 201, response.text
    with ledger.lock:
        ledger.written.update(zip(response.json()["ids"], texts))


def _stream_and_kill(server: ServerProcess, memory_id: str, headers: dict[str, str], ledger: Ledger, run: int,
                     rng: random.Random) -> None:
    target = ledger.acks() + rng.randint(3, 20)
    url = f"{server.url}/memories/{memory_id}"
    threads = [threading.Thread(target=_writer, args=(url, headers, ledger, run, w, rng.random()), daemon=True)
               for w in range(WRITERS)]
    for t in threads:
        t.start()
    while ledger.acks() < target and any(t.is_alive() for t in threads):
        threading.Event().wait(0.005)
    server.kill()
    for t in threads:
        t.join(timeout=15)


def _verify(server: ServerProcess, memory_id: str, headers: dict[str, str], ledger: Ledger, lm: larimar.Larimar,
            tmp: Path) -> list[str]:
    """Problems found after a restart (empty: consistent)."""
    client = httpx.Client(base_url=f"{server.url}/memories/{memory_id}", headers=headers, timeout=30.0)
    log = {f["id"]: f for f in client.get("/facts", params={"include_forgotten": True}).json()["facts"]}
    live = [f for f in log.values() if f["forgotten"] is None]
    problems = [f"acknowledged fact {i} lost" for i in ledger.written if i not in log]
    problems += [f"fact {i} text changed" for i, t in ledger.written.items() if i in log and log[i]["text"] != t]
    problems += [f"acknowledged forget of {i} lost" for i in ledger.forgotten if log.get(i, {}).get("forgotten") is None]
    problems += [f"fact {i} forgotten without a request" for i in ledger.written
                 if i in log and log[i]["forgotten"] is not None and i not in ledger.forgotten | ledger.uncertain]
    with ledger.lock:  # settle in-flight forgets from what the server committed
        for i in list(ledger.uncertain):
            if log.get(i, {}).get("forgotten") is not None:
                ledger.forgotten.add(i)
            ledger.uncertain.discard(i)
    path = tmp / "exported.safetensors"
    path.write_bytes(client.get("/export").content)
    memory = lm.load_memory(path)
    if [f.id for f in memory.facts()] != [f["id"] for f in live]:
        problems.append("memory state and fact log disagree")
    if live:
        prompt = random.choice(live)["text"]
        served = client.post("/ask", json={"prompt": prompt, "max_new_tokens": 4}).json()
        local = lm.ask(prompt, memory, max_new_tokens=4)
        if (served["text"], served["in_scope"], served["fact_id"]) != (local.text, local.in_scope, local.fact_id) \
                or served["similarity"] != pytest.approx(local.similarity, rel=1e-9):
            problems.append(f"readout differs from the stored memory: {served} vs {local}")
    client.close()
    return problems


def _crash_runs(server: ServerProcess, lm: larimar.Larimar, tmp_path: Path, runs: int) -> None:
    server.start()
    created = httpx.post(f"{server.url}/memories", json={"name": "crash"}).json()
    memory_id, headers = created["id"], {"Authorization": f"Bearer {created['api_key']}"}
    ledger, rng, failures = Ledger(), random.Random(0), {}
    try:
        for run in range(runs):
            _stream_and_kill(server, memory_id, headers, ledger, run, rng)
            server.start()
            problems = _verify(server, memory_id, headers, ledger, lm, tmp_path)
            if problems:
                failures[run] = problems
    finally:
        server.stop()
    passed = runs - len(failures)
    print(f"crash test: {passed}/{runs} runs consistent; {len(ledger.written)} acknowledged writes, "
          f"{len(ledger.forgotten)} forgets")
    assert not failures, f"{passed}/{runs} runs consistent; failures: {failures}"
    assert len(ledger.written) >= runs * 3


@pytest.mark.slow
def test_kill_during_writes_loses_no_acknowledged_fact(model_dir: Path, lm: larimar.Larimar, tmp_path: Path) -> None:
    server = ServerProcess(model_dir, tmp_path / "memories.db", tmp_path / "server.log", snapshot_every=5)
    _crash_runs(server, lm, tmp_path, RUNS)


@pytest.mark.slow
def test_kill_during_writes_on_postgres(model_dir: Path, lm: larimar.Larimar, tmp_path: Path, postgres_url: str) -> None:
    """The same on PostgreSQL: the server process dies, the database keeps every acknowledged change."""
    server = ServerProcess(model_dir, postgres_url, tmp_path / "server.log", snapshot_every=5)  # type: ignore[arg-type]
    _crash_runs(server, lm, tmp_path, RUNS_POSTGRES)
