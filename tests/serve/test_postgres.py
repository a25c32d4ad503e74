"""PostgreSQL as the shared store: the API on it, and two server processes (replicas) on one database.

Starts a throwaway PostgreSQL (Debian's package); skips, saying why, where it is not installed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

import larimar
from larimar.serve.service import MemoryService
from tests.serve.conftest import AppFactory, MemoryHandle
from tests.serve.server_process import ServerProcess
from tests.serve.test_log import FACTS, assert_same_memory

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]>=3.1,<4')")

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def service(client: TestClient) -> MemoryService:
    return client.app.state.service  # type: ignore[attr-defined,no-any-return]


def test_api_on_postgres_survives_a_restart(make_app: AppFactory, lm: larimar.Larimar, postgres_url: str) -> None:
    client = TestClient(make_app(db=postgres_url, snapshot_every=3))
    assert service(client).store.kind == "postgresql"
    memory = MemoryHandle(client)
    ids = [memory.write(f)[0] for f in FACTS[:5]]
    assert client.delete(memory.url(f"/facts/{ids[2]}"), headers=memory.headers).status_code == 200
    assert client.delete(memory.url(f"/facts/{ids[2]}"), headers=memory.headers).status_code == 409
    service(client).flush()
    answer = client.post(memory.url("/ask"), json={"prompt": FACTS[0], "max_new_tokens": 4}, headers=memory.headers).json()
    audit = client.get(memory.url("/facts?include_forgotten=true"), headers=memory.headers).json()["facts"]
    assert [f["id"] for f in audit] == ids and audit[2]["forgotten"] is not None

    restarted = TestClient(make_app(db=postgres_url, snapshot_every=3))
    again = restarted.post(memory.url("/ask"), json={"prompt": FACTS[0], "max_new_tokens": 4}, headers=memory.headers).json()
    assert {k: again[k] for k in ("text", "in_scope", "fact_id")} == {k: answer[k] for k in ("text", "in_scope", "fact_id")}
    assert_same_memory(service(restarted)._memory(memory.id), service(client)._memory(memory.id), lm, 1e-9, 1e-12)
    with psycopg.connect(postgres_url) as con:
        snapshot_seq, head_seq = con.execute("SELECT snapshot_seq, head_seq FROM heads").fetchone()
    assert 0 < snapshot_seq <= head_seq
    assert restarted.delete(memory.url(), headers=memory.headers).status_code == 204
    assert client.get(memory.url("/facts"), headers=memory.headers).status_code in (401, 404)


def test_concurrent_writes_through_two_apps_are_serialised(make_app: AppFactory, lm: larimar.Larimar,
                                                           postgres_url: str) -> None:
    a, b = TestClient(make_app(db=postgres_url)), TestClient(make_app(db=postgres_url))
    memory = MemoryHandle(a)
    written: list[str] = []
    lock = threading.Lock()

    def writer(client: TestClient, tag: str) -> None:
        for i in range(6):
            response = client.post(memory.url("/facts"), json={"facts": [f"{FACTS[i]} ({tag})"]}, headers=memory.headers)
            assert response.status_code == 201, response.text
            with lock:
                written.extend(response.json()["ids"])

    threads = [threading.Thread(target=writer, args=(c, t)) for c, t in ((a, "a"), (b, "b"), (a, "c"), (b, "d"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(written) == 24
    for client in (a, b):
        assert {f.id for f in service(client)._memory(memory.id).facts()} == set(written)
    assert_same_memory(service(a)._memory(memory.id), service(b)._memory(memory.id), lm, 1e-9, 1e-12)


@pytest.mark.slow
def test_two_server_processes_share_one_database(model_dir: Path, postgres_url: str, tmp_path: Path) -> None:
    """2 x 20 concurrent writes through two replicas: all 40 listed by both; a fact written through one
    is answered in scope through the other."""
    replicas = [ServerProcess(model_dir, postgres_url, tmp_path / f"replica{i}.log") for i in range(2)]  # type: ignore[arg-type]
    for replica in replicas:
        replica.start()
    try:
        created = httpx.post(f"{replicas[0].url}/memories", json={"name": "shared"}).json()
        headers = {"Authorization": f"Bearer {created['api_key']}"}
        urls = [f"{r.url}/memories/{created['id']}" for r in replicas]
        acknowledged: list[str] = []
        lock = threading.Lock()

        def writer(url: str, tag: str) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                for i in range(20):
                    response = http.post("/facts", json={"facts": [f"Replica fact {tag} {i} is about Paris."]})
                    assert response.status_code == 201, response.text
                    with lock:
                        acknowledged.extend(response.json()["ids"])

        threads = [threading.Thread(target=writer, args=(url, str(n))) for n, url in enumerate(urls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(acknowledged) == 40
        for url in urls:
            listed = httpx.get(f"{url}/facts", headers=headers).json()["facts"]
            assert {f["id"] for f in listed} == set(acknowledged)
        [fact_id] = httpx.post(f"{urls[0]}/facts", headers=headers, json={"facts": [FACTS[0]]}).json()["ids"]
        answer = httpx.post(f"{urls[1]}/ask", headers=headers, json={"prompt": FACTS[0], "max_new_tokens": 4}).json()
        assert answer["in_scope"] and answer["fact_id"] == fact_id
        exported = [httpx.get(f"{url}/export", headers=headers).content for url in urls]
        states = []
        for i, data in enumerate(exported):
            path = tmp_path / f"export{i}.safetensors"
            path.write_bytes(data)
            states.append(larimar.load(model_dir).load_memory(path))
        assert [f.id for f in states[0].facts()] == [f.id for f in states[1].facts()]
        torch.testing.assert_close(states[0].state.memory, states[1].state.memory, rtol=1e-9, atol=1e-12)
    finally:
        for replica in replicas:
            replica.stop()
