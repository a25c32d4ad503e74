"""Log-structured persistence: a change stores its log entry; state = snapshot + replayed log.

The replayed state equals the one the writer computed, and the one rebuilt by writing every live
fact anew (to rounding: the same float64 updates in another order); snapshots fold the log in;
databases from before the log load; two services on one database see each other's changes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import larimar
from larimar.editing.encoding import encode_texts
from larimar.serve import auth
from larimar.serve.replay import memory_bytes
from larimar.serve.service import MemoryService
from tests.serve.conftest import AppFactory, MemoryHandle


def recall_all(memory: larimar.Memory) -> torch.Tensor:
    """(N, C) the readouts of every written item."""
    return memory.recall(range(len(memory.items.owners)))

FACTS = ["Paris is the capital of France.", "The cat sat on the mat in the park.", "Berlin is the capital of Germany.",
         "The Danube flows into the Black Sea.", "Mount Everest is in Nepal.", "Shakespeare wrote Hamlet.",
         "The Beatles came from Liverpool.", "Apple was founded by Steve Jobs."]


def service(client: TestClient) -> MemoryService:
    return client.app.state.service  # type: ignore[attr-defined,no-any-return]


def log_rows(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute("SELECT COUNT(*) FROM log").fetchone()[0])


def assert_same_memory(a: larimar.Memory, b: larimar.Memory, lm: larimar.Larimar, rtol: float, atol: float) -> None:
    assert [(f.id, f.text, f.paraphrases) for f in a.facts()] == [(f.id, f.text, f.paraphrases) for f in b.facts()]
    for name in ("memory", "gram_pinv", "free"):
        torch.testing.assert_close(getattr(a.state, name), getattr(b.state, name), rtol=rtol, atol=atol)
    torch.testing.assert_close(a.items.latents, b.items.latents, rtol=rtol, atol=atol)
    z, _ = encode_texts(lm.model.encoder, FACTS)
    torch.testing.assert_close(recall_all(a), recall_all(b), rtol=rtol * 100, atol=atol * 100)


def test_a_write_stores_its_log_entry_not_the_state(make_app: AppFactory, tmp_path: Path) -> None:
    client = TestClient(make_app(snapshot_every=1000))
    memory = MemoryHandle(client)
    with sqlite3.connect(tmp_path / "memories.db") as con:
        snapshot = con.execute("SELECT state FROM memories").fetchone()[0]
    memory.write(FACTS[0])
    memory.write(*FACTS[1:3])
    with sqlite3.connect(tmp_path / "memories.db") as con:
        assert con.execute("SELECT state FROM memories").fetchone()[0] == snapshot  # untouched
        entries = con.execute("SELECT op, length(data) FROM log ORDER BY seq").fetchall()
    assert [op for op, _ in entries] == ["write", "write"]
    assert all(size < len(snapshot) for _, size in entries)


def test_replayed_state_equals_written_and_rebuilt_state(make_app: AppFactory, model_dir: Path, lm: larimar.Larimar,
                                                        tmp_path: Path) -> None:
    client = TestClient(make_app(snapshot_every=3))
    memory = MemoryHandle(client)
    ids = [memory.write(f)[0] for f in FACTS[:4]]
    written = client.post(memory.url("/facts"), json={"facts": FACTS[4:6], "paraphrases": [["Everest lies in Nepal."], []]},
                          headers=memory.headers).json()["ids"]
    for gone in (ids[1], written[1]):
        assert client.delete(memory.url(f"/facts/{gone}"), headers=memory.headers).status_code == 200
    memory.write(*FACTS[6:])
    service(client).flush()
    in_process = service(client)._memory(memory.id)

    restarted = TestClient(make_app(snapshot_every=3))
    replayed = service(restarted)._memory(memory.id)
    assert replayed is not in_process
    assert_same_memory(replayed, in_process, lm, rtol=1e-9, atol=1e-12)  # the same updates, replayed

    live = [f for f in in_process.facts()]
    rebuilt = lm.new_memory()
    for fact in live:
        rebuilt.write([fact.text], [list(fact.paraphrases)])
    assert [f.text for f in rebuilt.facts()] == [f.text for f in replayed.facts()]
    # rebuilt in another order (forgets are downdates): equal up to float64 rounding of those updates
    # (key statistics, pseudo-inverses of a Gram matrix, lose a few more digits in the downdates)
    torch.testing.assert_close(replayed.state.memory, rebuilt.state.memory, rtol=1e-5, atol=1e-6)
    for name in ("gram_pinv", "free"):
        torch.testing.assert_close(getattr(replayed.state, name), getattr(rebuilt.state, name), rtol=1e-4, atol=1e-5)
    z, _ = encode_texts(lm.model.encoder, FACTS)
    torch.testing.assert_close(recall_all(replayed), recall_all(rebuilt), rtol=1e-5, atol=1e-6)


def test_snapshots_fold_the_log_in(make_app: AppFactory, lm: larimar.Larimar, tmp_path: Path) -> None:
    db = tmp_path / "memories.db"
    client = TestClient(make_app(snapshot_every=3))
    memory = MemoryHandle(client)
    for fact in FACTS[:7]:
        memory.write(fact)
    service(client).flush()
    with sqlite3.connect(db) as con:
        snapshot_seq, head_seq = con.execute("SELECT snapshot_seq, head_seq FROM heads").fetchone()
    assert snapshot_seq >= 6 and head_seq == 7 and log_rows(db) == head_seq - snapshot_seq < 3
    again = service(TestClient(make_app(snapshot_every=3)))._memory(memory.id)
    assert_same_memory(again, service(client)._memory(memory.id), lm, rtol=1e-9, atol=1e-12)


def test_a_change_from_before_a_snapshot_does_not_bring_its_entries_back(make_app: AppFactory) -> None:
    """A write computed from the cache as it was before a snapshot (the snapshot thread ran
    meanwhile) keeps only the entries after the snapshot in its tail."""
    from larimar.serve.service import Cached

    client = TestClient(make_app(snapshot_every=3))
    memory = MemoryHandle(client)
    for fact in FACTS[:3]:
        memory.write(fact)
    svc = service(client)
    svc.flush()
    now = svc._memories[memory.id]
    assert now.seq == 3 and now.tail == ()  # the snapshot folded entries 1-3 in
    svc._cache(memory.id, Cached(now.memory, 4, (1, 2, 3, 4), 0.0))  # as a write that began before it
    assert svc._memories[memory.id].tail == (4,)


def test_database_from_before_the_log_loads(make_app: AppFactory, lm: larimar.Larimar, tmp_path: Path) -> None:
    """The schema of the first release: memories.state held the whole memory, no log table."""
    db = tmp_path / "old.db"
    old = lm.new_memory()
    [kept, dropped] = old.write(FACTS[:2])
    old.forget(dropped)
    memory_id = auth.new_memory_id()
    key = auth.new_key(memory_id)
    hashed = auth.hash_key(key)
    fact = old.facts()[0]
    with sqlite3.connect(db) as con:
        con.executescript("""
            CREATE TABLE memories (id TEXT PRIMARY KEY, name TEXT NOT NULL, created TEXT NOT NULL, deleted TEXT,
                key_salt BLOB NOT NULL, key_hash BLOB NOT NULL, state BLOB);
            CREATE TABLE facts (seq INTEGER PRIMARY KEY AUTOINCREMENT, memory_id TEXT NOT NULL REFERENCES memories(id),
                id TEXT NOT NULL, text TEXT NOT NULL, paraphrases TEXT NOT NULL, created TEXT NOT NULL, forgotten TEXT,
                UNIQUE (memory_id, id));""")
        con.execute("INSERT INTO memories VALUES (?, 'old', ?, NULL, ?, ?, ?)",
                    (memory_id, fact.created.isoformat(), hashed.salt, hashed.digest, memory_bytes(old)))
        con.execute("INSERT INTO facts (memory_id, id, text, paraphrases, created) VALUES (?, ?, ?, '[]', ?)",
                    (memory_id, kept, fact.text, fact.created.isoformat()))
    client = TestClient(make_app(db=db))
    headers = {"Authorization": f"Bearer {key}"}
    url = f"/memories/{memory_id}"
    assert [f["id"] for f in client.get(url + "/facts", headers=headers).json()["facts"]] == [kept]
    answer = client.post(url + "/ask", json={"prompt": FACTS[0], "max_new_tokens": 4}, headers=headers).json()
    want = lm.ask(FACTS[0], old, max_new_tokens=4)
    assert (answer["text"], answer["fact_id"]) == (want.text, want.fact_id)
    new = client.post(url + "/facts", json={"facts": [FACTS[2]]}, headers=headers).json()["ids"]
    assert client.delete(url + f"/facts/{kept}", headers=headers).status_code == 200
    reopened = service(TestClient(make_app(db=db)))._memory(memory_id)
    assert [f.id for f in reopened.facts()] == new


def test_two_services_on_one_database_see_each_others_changes(make_app: AppFactory, lm: larimar.Larimar) -> None:
    """Replicas: each refreshes its cached memory from the log when the log has moved."""
    a, b = TestClient(make_app(snapshot_every=4)), TestClient(make_app(snapshot_every=4))
    memory = MemoryHandle(a)
    via_b = MemoryHandle.__new__(MemoryHandle)
    via_b.client, via_b.id, via_b.key, via_b.headers = b, memory.id, memory.key, memory.headers
    [first] = memory.write(FACTS[0])
    assert b.post(memory.url("/ask"), json={"prompt": FACTS[0]}, headers=memory.headers).json()["fact_id"] == first
    errors: list[str] = []

    def writer(handle: MemoryHandle, facts: list[str]) -> None:
        for fact in facts:
            response = handle.client.post(handle.url("/facts"), json={"facts": [fact]}, headers=handle.headers)
            if response.status_code != 201:
                errors.append(response.text)

    threads = [threading.Thread(target=writer, args=(memory, [f"{f} (a{i})" for i, f in enumerate(FACTS)])),
               threading.Thread(target=writer, args=(via_b, [f"{f} (b{i})" for i, f in enumerate(FACTS)]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    listed = [{f["id"] for f in c.get(memory.url("/facts"), headers=memory.headers).json()["facts"]} for c in (a, b)]
    assert listed[0] == listed[1] and len(listed[0]) == 1 + 2 * len(FACTS)
    in_a, in_b = service(a)._memory(memory.id), service(b)._memory(memory.id)
    assert {f.id for f in in_a.facts()} == {f.id for f in in_b.facts()} == listed[0]
    assert_same_memory(in_a, in_b, lm, rtol=1e-9, atol=1e-12)
    assert b.delete(memory.url(f"/facts/{first}"), headers=memory.headers).status_code == 200
    assert first not in {f.id for f in service(a)._memory(memory.id).facts()}


def test_a_database_of_another_model_migrates(make_app: AppFactory, model_dir: Path, lm: larimar.Larimar,
                                             tmp_path: Path) -> None:
    """After an upgrade of the model, a memory's snapshot and its log tail are encoded again from
    their facts: entries that name the old model, and entries from before entries named one."""
    from larimar.serve import ServeConfig, create_app
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    from larimar.serve.replay import _metadata

    old = larimar.load(model_dir)
    with torch.no_grad():
        old.model.encoder.head.weight.add_(torch.randn_like(old.model.encoder.head.weight))
    db = tmp_path / "memories.db"
    before = TestClient(create_app(ServeConfig(db=db, snapshot_every=3), old))
    memory = MemoryHandle(before)
    for fact in FACTS[:5]:
        memory.write(fact)
    service(before).flush()
    with sqlite3.connect(db) as con:  # the tail's first entry as written before entries named their model
        seq, data = con.execute("SELECT seq, data FROM log WHERE op = 'write' ORDER BY seq LIMIT 1").fetchone()
        meta = json.loads(_metadata(data)["entry"])
        del meta["model"]
        con.execute("UPDATE log SET data = ? WHERE seq = ?",
                    (save_tensors(load_tensors(data), metadata={"entry": json.dumps(meta)}), seq))
        assert con.execute("SELECT COUNT(*) FROM log WHERE op = 'write'").fetchone()[0] == 2  # 4 and 5
    after = TestClient(make_app(db=db))
    migrated = service(after)._memory(memory.id)
    fresh = lm.new_memory()
    fresh.write(FACTS[:5])
    assert [f.text for f in migrated.facts()] == FACTS[:5]
    torch.testing.assert_close(migrated.items.latents, fresh.items.latents, rtol=1e-5, atol=1e-6)  # float32 encoder, other batches
    answer = after.post(memory.url("/ask"), json={"prompt": FACTS[4], "max_new_tokens": 4}, headers=memory.headers)
    assert answer.json()["fact_id"] == migrated.facts()[4].id


def test_snapshot_every_must_be_positive(make_app: AppFactory) -> None:
    with pytest.raises(ValueError, match="snapshot_every"):
        make_app(snapshot_every=0)


def test_snapshots_by_age_with_an_injected_clock(lm: larimar.Larimar, tmp_path: Path) -> None:
    """A memory written rarely is snapshotted once its oldest unsnapshotted change is old enough."""
    from larimar.serve.config import Limits
    from larimar.serve.postgres import open_store

    db, now = tmp_path / "aged.db", [1000.0]
    svc = MemoryService(lm, open_store(db), Limits(), snapshot_every=1000, snapshot_seconds=30.0,
                        clock=lambda: now[0], ask_batch=1)

    def heads() -> tuple[int, int]:
        svc.flush()
        with sqlite3.connect(db) as con:
            return con.execute("SELECT snapshot_seq, head_seq FROM heads").fetchone()

    try:
        memory_id = svc.create("aged").memory.id
        svc.write(memory_id, FACTS[:1], None)
        now[0] += 20.0
        svc.write(memory_id, FACTS[1:2], None)  # the oldest change is 20 s old: not yet
        svc.snapshot_due()
        assert heads() == (0, 2) and log_rows(db) == 2
        now[0] += 10.0  # 30 s: due, without any further change
        svc.snapshot_due()
        assert heads() == (2, 2) and log_rows(db) == 0
        svc.write(memory_id, FACTS[2:3], None)  # the age counts from this change, not the last snapshot
        now[0] += 29.0
        svc.snapshot_due()
        assert heads() == (2, 3)
        now[0] += 1.0
        svc.write(memory_id, FACTS[3:4], None)  # a change may trigger it too
        assert heads() == (4, 4) and log_rows(db) == 0
        assert svc._memories[memory_id].tail == () and svc._memories[memory_id].since is None
    finally:
        svc.close()
    again = service(TestClient(create_app_for(lm, db)))._memory(memory_id)
    assert [f.text for f in again.facts()] == FACTS[:4]


def create_app_for(lm: larimar.Larimar, db: Path):  # noqa: ANN201
    from larimar.serve import ServeConfig
    from larimar.serve.app import create_app

    return create_app(ServeConfig(db=db, snapshot_seconds=0), lm)


def test_snapshot_seconds_is_checked() -> None:
    from larimar.serve import ServeConfig

    with pytest.raises(ValueError, match="snapshot_seconds"):
        ServeConfig(snapshot_seconds=-1)
