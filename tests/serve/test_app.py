"""Every endpoint of the memory service through an in-process client, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import larimar
from larimar.editing.persistence import read_facts
from larimar.serve import Limits
from tests.serve.conftest import AppFactory, MemoryHandle

FACT = "Paris is the capital of France."
OTHER = "The cat sat on the mat in the park."


def error(response, status: int, code: str, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and set(body) == {"error", "detail"}
    for word in words:
        assert word in body["detail"], body["detail"]


# ----------------------------------------------------------------------------- service, page, docs
def test_health_page_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="ask"' in page.text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/memories", "/memories/import", "/memories/{memory_id}", "/memories/{memory_id}/export",
            "/memories/{memory_id}/facts", "/memories/{memory_id}/facts/{fact_id}", "/memories/{memory_id}/ask",
            "/memories/{memory_id}/score"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_unknown_route_and_method(client: TestClient) -> None:
    error(client.get("/nowhere"), 404, "not_found", "/nowhere")
    error(client.put("/memories"), 405, "method_not_allowed")


# ----------------------------------------------------------------------------- memories
def test_create_get_list_delete(client: TestClient) -> None:
    created = client.post("/memories", json={"name": "alice"})
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "alice" and body["facts"] == 0 and body["api_key"].startswith(f"lmk_{body['id']}.")
    headers = {"Authorization": f"Bearer {body['api_key']}"}
    info = client.get(f"/memories/{body['id']}", headers=headers).json()
    assert info == {k: body[k] for k in ("id", "name", "created", "facts")}
    assert client.get("/memories", headers=headers).json() == {"memories": [info]}
    assert client.delete(f"/memories/{body['id']}", headers=headers).status_code == 204
    error(client.get(f"/memories/{body['id']}", headers=headers), 401, "unauthorized", "invalid API key")


def test_create_errors(client: TestClient) -> None:
    error(client.post("/memories", json={"name": "x" * 101}), 422, "invalid", "name has 101 characters")
    error(client.post("/memories", json={"nmae": "typo"}), 422, "invalid", "nmae")
    error(client.post("/memories", content=b"{not json", headers={"Content-Type": "application/json"}), 422, "invalid")
    error(client.get("/memories"), 401, "unauthorized", "missing API key")


def test_key_in_x_api_key_header(client: TestClient, memory: MemoryHandle) -> None:
    assert client.get(memory.url(), headers={"X-API-Key": memory.key}).status_code == 200


def test_admin_key(make_app: AppFactory) -> None:
    admin = "a" * 32
    client = TestClient(make_app(admin_key=admin))
    error(client.post("/memories", json={}), 401, "unauthorized", "admin key")
    error(client.post("/memories/import", content=b"x"), 401, "unauthorized", "admin key")
    as_admin = {"Authorization": f"Bearer {admin}"}
    ids = [client.post("/memories", json={"name": n}, headers=as_admin).json()["id"] for n in ("a", "b")]
    listed = client.get("/memories", headers=as_admin).json()["memories"]
    assert [m["id"] for m in listed] == ids
    error(client.get(f"/memories/{ids[0]}", headers=as_admin), 401, "unauthorized")  # admin cannot read contents


def test_export_import_round_trip(client: TestClient, memory: MemoryHandle, lm: larimar.Larimar, tmp_path: Path) -> None:
    ids = memory.write(FACT, OTHER)
    exported = client.get(memory.url("/export"), headers=memory.headers)
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/octet-stream"
    path = tmp_path / "m.safetensors"
    path.write_bytes(exported.content)
    assert [f.id for f in read_facts(path)] == ids
    assert len(lm.load_memory(path)) == 2
    imported = client.post("/memories/import?name=copy", content=exported.content)
    assert imported.status_code == 201
    copy = imported.json()
    assert copy["facts"] == 2 and copy["name"] == "copy" and copy["id"] != memory.id
    headers = {"Authorization": f"Bearer {copy['api_key']}"}
    assert [f["id"] for f in client.get(f"/memories/{copy['id']}/facts", headers=headers).json()["facts"]] == ids
    ask = {"prompt": FACT, "max_new_tokens": 4}
    assert (client.post(f"/memories/{copy['id']}/ask", json=ask, headers=headers).json()
            == client.post(memory.url("/ask"), json=ask, headers=memory.headers).json())


def test_import_errors(make_app: AppFactory) -> None:
    client = TestClient(make_app(limits=Limits(max_import_bytes=1000)))
    error(client.post("/memories/import", content=b"not a memory file"), 422, "invalid", "not a memory file")
    error(client.post("/memories/import", content=b"x" * 2000), 413, "too_large", "1000 bytes")


# ----------------------------------------------------------------------------- facts
def test_write_list_get_forget(client: TestClient, memory: MemoryHandle) -> None:
    written = client.post(memory.url("/facts"), json={"facts": [FACT, OTHER], "paraphrases": [["France's capital is Paris."], []]},
                          headers=memory.headers)
    assert written.status_code == 201
    ids = written.json()["ids"]
    facts = written.json()["facts"]
    assert [f["text"] for f in facts] == [FACT, OTHER] and facts[0]["paraphrases"] == ["France's capital is Paris."]
    assert client.get(memory.url("/facts"), headers=memory.headers).json()["facts"] == facts
    forgotten = client.delete(memory.url(f"/facts/{ids[0]}"), headers=memory.headers)
    assert forgotten.status_code == 200 and forgotten.json()["forgotten"] is not None
    assert [f["id"] for f in client.get(memory.url("/facts"), headers=memory.headers).json()["facts"]] == ids[1:]
    audit = client.get(memory.url("/facts?include_forgotten=true"), headers=memory.headers).json()["facts"]
    assert [f["id"] for f in audit] == ids and audit[0]["forgotten"] == forgotten.json()["forgotten"]
    assert client.get(memory.url(f"/facts/{ids[0]}"), headers=memory.headers).json() == audit[0]
    assert client.get(memory.url(), headers=memory.headers).json()["facts"] == 1


def test_forget_errors(client: TestClient, memory: MemoryHandle) -> None:
    [fact_id] = memory.write(FACT)
    error(client.delete(memory.url("/facts/nope"), headers=memory.headers), 404, "not_found", "no fact nope")
    error(client.get(memory.url("/facts/nope"), headers=memory.headers), 404, "not_found", "no fact nope")
    client.delete(memory.url(f"/facts/{fact_id}"), headers=memory.headers)
    error(client.delete(memory.url(f"/facts/{fact_id}"), headers=memory.headers), 409, "conflict", "already forgotten")


@pytest.mark.parametrize(("body", "words"), [
    ({"facts": []}, ["facts is empty"]),
    ({"facts": [FACT] * 5}, ["5 facts in one request", "at most 4"]),
    ({"facts": ["x" * 201]}, ["facts[0] has 201 characters", "at most 200"]),
    ({"facts": ["   "]}, ["facts[0] is empty"]),
    ({"facts": [" ".join(["cat"] * 40)]}, ["encoder tokens"]),
    ({"facts": [FACT], "paraphrases": [[], []]}, ["one list per fact"]),
    ({"facts": [FACT], "paraphrases": [["p"] * 3]}, ["paraphrases[0] has 3 entries"]),
    ({"facts": "one string"}, ["body.facts"]),
    ({"facts": [1]}, ["body.facts.0"]),
])
def test_write_errors(make_app: AppFactory, body: dict, words: list[str]) -> None:  # type: ignore[type-arg]
    client = TestClient(make_app(limits=Limits(max_batch=4, max_fact_chars=200, max_paraphrases=2)))
    memory = MemoryHandle(client)
    error(client.post(memory.url("/facts"), json=body, headers=memory.headers), 422, "invalid", *words)
    assert client.get(memory.url("/facts"), headers=memory.headers).json()["facts"] == []


def test_request_size_limit(make_app: AppFactory) -> None:
    client = TestClient(make_app(limits=Limits(max_request_bytes=512)))
    memory = MemoryHandle(client)
    error(client.post(memory.url("/facts"), json={"facts": ["word " * 200]}, headers=memory.headers),
          413, "too_large", "at most 512 bytes")


# ----------------------------------------------------------------------------- ask and score
def test_ask_in_and_out_of_scope(client: TestClient, memory: MemoryHandle, lm: larimar.Larimar) -> None:
    empty = client.post(memory.url("/ask"), json={"prompt": FACT, "max_new_tokens": 4}, headers=memory.headers).json()
    assert empty == {"text": lm.ask(FACT, None, max_new_tokens=4).text, "in_scope": False, "fact_id": None,
                     "fact": None, "similarity": None, "score": None}
    [fact_id] = memory.write(FACT)
    answer = client.post(memory.url("/ask"), json={"prompt": FACT, "max_new_tokens": 4}, headers=memory.headers).json()
    assert answer["in_scope"] and answer["fact_id"] == fact_id and answer["fact"] == FACT
    assert answer["similarity"] == pytest.approx(1.0) and answer["score"] == pytest.approx(answer["similarity"])
    assert answer["text"] != empty["text"]  # the memory conditions the decoder
    strict = client.post(memory.url("/ask"), json={"prompt": OTHER, "scope_threshold": 1.0, "max_new_tokens": 4},
                         headers=memory.headers).json()
    assert not strict["in_scope"] and strict["fact_id"] == fact_id and strict["similarity"] < 1.0


def test_score(client: TestClient, memory: MemoryHandle, lm: larimar.Larimar) -> None:
    [fact_id] = memory.write(FACT)
    body = {"prompt": "Paris is the capital of", "candidates": ["France.", "the mat."]}
    scored = client.post(memory.url("/score"), json=body, headers=memory.headers).json()
    assert scored["fact_id"] == fact_id and isinstance(scored["in_scope"], bool)
    assert len(scored["scores"]) == 2 and scored["best"] == min((0, 1), key=scored["scores"].__getitem__)


@pytest.mark.parametrize(("path", "body", "words"), [
    ("/ask", {"prompt": ""}, ["prompt is empty"]),
    ("/ask", {"prompt": "x" * 101}, ["prompt has 101 characters"]),
    ("/ask", {"prompt": FACT, "max_new_tokens": 0}, ["max_new_tokens must be in [1, 8]"]),
    ("/ask", {"prompt": FACT, "max_new_tokens": 9}, ["max_new_tokens must be in [1, 8]"]),
    ("/ask", {"prompt": FACT, "scope_threshold": 2.0}, ["scope_threshold"]),
    ("/ask", {}, ["body.prompt"]),
    ("/score", {"prompt": FACT, "candidates": []}, ["candidates is empty"]),
    ("/score", {"prompt": FACT, "candidates": ["a"] * 4}, ["4 candidates; at most 3"]),
    ("/score", {"prompt": FACT, "candidates": "Paris"}, ["body.candidates"]),
])
def test_query_errors(make_app: AppFactory, path: str, body: dict, words: list[str]) -> None:  # type: ignore[type-arg]
    client = TestClient(make_app(limits=Limits(max_prompt_chars=100, max_new_tokens=8, max_candidates=3)))
    memory = MemoryHandle(client)
    memory.write(FACT)
    error(client.post(memory.url(path), json=body, headers=memory.headers), 422, "invalid", *words)
