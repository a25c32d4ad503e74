"""Persistence: WAL mode, one transaction per change, the same readouts after a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import larimar
from larimar.editing.encoding import encode_texts
from larimar.serve import ServeConfig, create_app
from larimar.serve.service import MemoryService
from larimar.serve.storage import Change
from tests.serve.conftest import AppFactory, MemoryHandle


def recall_all(memory: larimar.Memory) -> torch.Tensor:
    """(N, C) the readouts of every written item."""
    return memory.recall(range(len(memory.items.owners)))

FACTS = ["Paris is the capital of France.", "The cat sat on the mat in the park.", "Berlin is the capital of Germany."]


def service(client: TestClient) -> MemoryService:
    return client.app.state.service  # type: ignore[attr-defined,no-any-return]


def test_database_is_in_wal_mode(client: TestClient, tmp_path: Path) -> None:
    MemoryHandle(client)
    with sqlite3.connect(tmp_path / "memories.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_key_is_stored_hashed(client: TestClient, memory: MemoryHandle, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "memories.db") as db:
        salt, digest = db.execute("SELECT key_salt, key_hash FROM memories").fetchone()
    assert len(salt) == 16 and len(digest) == 32 and memory.key.encode() not in digest
    assert memory.key.split(".")[1].encode() not in (tmp_path / "memories.db").read_bytes()


def test_restart_restores_the_same_readouts(make_app: AppFactory, model_dir: Path, tmp_path: Path) -> None:
    """A new process (new model object, new app) on the same database replays the log to the same state
    and gives the same answers (tensors equal to rounding: no test relies on bit equality)."""
    before = TestClient(make_app())
    memory = MemoryHandle(before)
    ids = memory.write(*FACTS)
    before.delete(memory.url(f"/facts/{ids[1]}"), headers=memory.headers)
    queries = {"prompt": "Paris is the capital of France.", "max_new_tokens": 6}
    score = {"prompt": "Berlin is the capital of", "candidates": ["Germany.", "France."]}
    answers = [before.post(memory.url(p), json=b, headers=memory.headers).json() for p, b in (("/ask", queries), ("/score", score))]
    lm_before = service(before).lm
    z, _ = encode_texts(lm_before.model.encoder, FACTS)
    readout = recall_all(service(before)._memory(memory.id))

    restarted = TestClient(create_app(ServeConfig(db=tmp_path / "memories.db", model=model_dir)))  # loads the model anew
    again = [restarted.post(memory.url(p), json=b, headers=memory.headers).json() for p, b in (("/ask", queries), ("/score", score))]
    # the same text; scores agree to rounding (float32 products on freshly loaded weights)
    assert {k: v for k, v in again[0].items() if k != "similarity"} == {k: v for k, v in answers[0].items() if k != "similarity"}
    assert again[0]["similarity"] == pytest.approx(answers[0]["similarity"], rel=1e-6)
    assert {k: v for k, v in again[1].items() if k not in ("scores", "similarity")} == \
        {k: v for k, v in answers[1].items() if k not in ("scores", "similarity")}
    assert again[1]["scores"] == pytest.approx(answers[1]["scores"], rel=1e-5)
    reloaded = service(restarted)._memory(memory.id)
    assert reloaded is not service(before)._memory(memory.id)
    torch.testing.assert_close(recall_all(reloaded), readout, rtol=1e-10, atol=1e-12)  # computed: rounding only
    for name in ("memory", "gram_pinv", "free"):  # replayed from the log: the same updates, equal to rounding
        torch.testing.assert_close(getattr(reloaded.state, name), getattr(service(before)._memory(memory.id).state, name),
                                   rtol=1e-9, atol=1e-12)
    assert [f.id for f in reloaded.facts()] == [ids[0], ids[2]]


def test_failed_commit_changes_nothing(client: TestClient, memory: MemoryHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Facts and their log entry go in one transaction: when appending the entry fails, no fact row stays."""
    [kept] = memory.write(FACTS[0])
    before = service(client).store.load(memory.id)

    def broken(*_: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Change, "_append", broken)
    with pytest.raises(sqlite3.OperationalError):
        client.post(memory.url("/facts"), json={"facts": FACTS[1:]}, headers=memory.headers)
    with pytest.raises(sqlite3.OperationalError):
        client.delete(memory.url(f"/facts/{kept}"), headers=memory.headers)
    monkeypatch.undo()
    assert service(client).store.load(memory.id) == before
    audit = client.get(memory.url("/facts?include_forgotten=true"), headers=memory.headers).json()["facts"]
    assert [(f["id"], f["forgotten"]) for f in audit] == [(kept, None)]
    assert [f.id for f in service(client)._memory(memory.id).facts()] == [kept]  # the cache kept the committed memory
    memory.write(FACTS[1])
    assert len(client.get(memory.url("/facts"), headers=memory.headers).json()["facts"]) == 2


def test_fact_log_matches_memory_state(client: TestClient, memory: MemoryHandle, lm: larimar.Larimar, tmp_path: Path) -> None:
    ids = memory.write(*FACTS)
    client.delete(memory.url(f"/facts/{ids[0]}"), headers=memory.headers)
    path = tmp_path / "state.safetensors"
    path.write_bytes(client.get(memory.url("/export"), headers=memory.headers).content)
    logged = [f["id"] for f in client.get(memory.url("/facts"), headers=memory.headers).json()["facts"]]
    assert [f.id for f in lm.load_memory(path).facts()] == logged == ids[1:]


def test_deleted_memory_keeps_its_audit_log(client: TestClient, memory: MemoryHandle) -> None:
    ids = memory.write(*FACTS[:2])
    client.delete(memory.url(), headers=memory.headers)
    store = service(client).store
    assert store.load(memory.id) is None and store.key(memory.id) is None
    log = store.facts(memory.id, include_forgotten=True)
    assert [f.id for f in log] == ids and all(f.forgotten is not None for f in log)
