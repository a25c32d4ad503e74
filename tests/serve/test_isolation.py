"""A key opens its own memory only: every route of memory B refuses memory A's key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.serve.conftest import MemoryHandle

ROUTES = [
    ("GET", "", None),
    ("DELETE", "", None),
    ("GET", "/export", None),
    ("GET", "/facts", None),
    ("POST", "/facts", {"facts": ["Berlin is the capital of Germany."]}),
    ("GET", "/facts/{fact}", None),
    ("DELETE", "/facts/{fact}", None),
    ("POST", "/ask", {"prompt": "Paris is the capital of France."}),
    ("POST", "/score", {"prompt": "Paris is the capital of", "candidates": ["France."]}),
]


@pytest.fixture
def pair(client: TestClient) -> tuple[MemoryHandle, MemoryHandle, str]:
    a, b = MemoryHandle(client, "a"), MemoryHandle(client, "b")
    a.write("The cat sat on the mat in the park.")
    [fact_b] = b.write("Paris is the capital of France.")
    return a, b, fact_b


def _call(client: TestClient, method: str, url: str, body: dict | None, headers: dict[str, str]):  # type: ignore[no-untyped-def,type-arg]
    return client.request(method, url, json=body, headers=headers)


@pytest.mark.parametrize(("method", "suffix", "body"), ROUTES)
def test_other_memorys_key_is_forbidden(client: TestClient, pair: tuple[MemoryHandle, MemoryHandle, str],
                                        method: str, suffix: str, body: dict | None) -> None:  # type: ignore[type-arg]
    a, b, fact_b = pair
    response = _call(client, method, b.url(suffix.format(fact=fact_b)), body, a.headers)
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "forbidden" and a.id in response.json()["detail"]
    _assert_b_unchanged(client, b, fact_b)


@pytest.mark.parametrize(("method", "suffix", "body"), ROUTES)
@pytest.mark.parametrize("key", [None, "", "wrong", "lmk_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"])
def test_missing_or_bad_key_is_unauthorized(client: TestClient, pair: tuple[MemoryHandle, MemoryHandle, str],
                                            method: str, suffix: str, body: dict | None, key: str | None) -> None:  # type: ignore[type-arg]
    _, b, fact_b = pair
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    response = _call(client, method, b.url(suffix.format(fact=fact_b)), body, headers)
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    _assert_b_unchanged(client, b, fact_b)


def test_forged_key_with_other_memory_id(client: TestClient, pair: tuple[MemoryHandle, MemoryHandle, str]) -> None:
    """A's secret under B's id is not B's key."""
    a, b, fact_b = pair
    forged = f"lmk_{b.id}.{a.key.split('.', 1)[1]}"
    response = client.get(b.url("/facts"), headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    _assert_b_unchanged(client, b, fact_b)


def test_fact_ids_are_scoped_to_their_memory(client: TestClient, pair: tuple[MemoryHandle, MemoryHandle, str]) -> None:
    """A cannot reach B's fact through its own memory's URL either."""
    a, b, fact_b = pair
    assert client.get(a.url(f"/facts/{fact_b}"), headers=a.headers).status_code == 404
    assert client.delete(a.url(f"/facts/{fact_b}"), headers=a.headers).status_code == 404
    _assert_b_unchanged(client, b, fact_b)


def test_listing_shows_only_the_keys_memory(client: TestClient, pair: tuple[MemoryHandle, MemoryHandle, str]) -> None:
    a, b, _ = pair
    assert [m["id"] for m in client.get("/memories", headers=a.headers).json()["memories"]] == [a.id]
    assert [m["id"] for m in client.get("/memories", headers=b.headers).json()["memories"]] == [b.id]


def test_answers_use_only_their_own_memory(client: TestClient, pair: tuple[MemoryHandle, MemoryHandle, str]) -> None:
    a, _, fact_b = pair
    answer = client.post(a.url("/ask"), json={"prompt": "Paris is the capital of France."}, headers=a.headers).json()
    assert answer["fact_id"] != fact_b and answer["fact"] == "The cat sat on the mat in the park."


def test_deleted_memory_key_stops_working(client: TestClient, pair: tuple[MemoryHandle, MemoryHandle, str]) -> None:
    a, b, fact_b = pair
    assert client.delete(a.url(), headers=a.headers).status_code == 204
    assert client.get(a.url("/facts"), headers=a.headers).status_code == 401
    _assert_b_unchanged(client, b, fact_b)


def _assert_b_unchanged(client: TestClient, b: MemoryHandle, fact_b: str) -> None:
    facts = client.get(b.url("/facts?include_forgotten=true"), headers=b.headers).json()["facts"]
    assert [(f["id"], f["forgotten"]) for f in facts] == [(fact_b, None)]
