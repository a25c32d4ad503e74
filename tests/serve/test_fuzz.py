"""The API fuzzed from its own OpenAPI document (schemathesis): every endpoint, generated requests.

Valid and invalid requests (schemathesis' positive and negative modes). No request gets a 5xx; every error is JSON {"error": code, "detail": message} with a message; a
request with one memory's key never reaches another memory. Two memories exist, holding facts;
requests carry the first memory's key, the second's, the admin key, a malformed key or none,
and half of them aim at the first memory's id.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from larimar.serve import Limits
from tests.serve.conftest import AppFactory, MemoryHandle

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e '.[test]')")
GenerationMode = schemathesis.GenerationMode

ADMIN = "admin-key-for-the-fuzz-test-0123456789"
EXAMPLES = 30


def test_api_fuzzed_from_its_schema(make_app: AppFactory) -> None:
    app = make_app(admin_key=ADMIN, limits=Limits(max_new_tokens=8), ask_batch=1)
    client = TestClient(app)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    handles = []
    for name in ("mine", "theirs"):
        created = client.post("/memories", json={"name": name}, headers=admin).json()
        handle = MemoryHandle.__new__(MemoryHandle)
        handle.client, handle.id, handle.key = client, created["id"], created["api_key"]
        handle.headers = {"Authorization": f"Bearer {created['api_key']}"}
        handle.write("Paris is the capital of France.", "The cat sat on the mat.")
        handles.append(handle)
    mine, theirs = handles
    keys: dict[str, dict[str, str]] = {"mine": mine.headers, "theirs": theirs.headers, "admin": admin,
                                       "malformed": {"Authorization": "Bearer lmk_nonsense"}, "none": {}}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    problems: list[str] = []
    seen: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:
        cases = st.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                          operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=cases, who=st.sampled_from(sorted(keys)), aim=st.booleans())
        def fuzz(case: Any, who: str, aim: bool) -> None:
            if case.path_parameters and "memory_id" in case.path_parameters and aim:
                case.path_parameters["memory_id"] = mine.id
            headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "x-api-key")}
            response = case.call(headers={**headers, **keys[who]})
            where = f"{case.method} {case.formatted_path} as {who} -> {response.status_code}"
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                problems.append(f"{where}: server error {response.text[:200]}")
            elif response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    problems.append(f"{where}: error is not JSON: {response.text[:200]}")
                    return
                if set(body) != {"error", "detail"} or not str(body["detail"]).strip():
                    problems.append(f"{where}: error without a clear message: {body}")
            elif (case.path_parameters or {}).get("memory_id") == mine.id and who == "theirs":
                problems.append(f"{where}: another memory's key reached this memory")

        fuzz()
    print("statuses:", sorted(seen.items()))
    assert not problems, "\n".join(problems[:20])
    assert {200, 201, 401, 403, 422} <= set(seen)
    # nothing the fuzzing did through other keys changed the first memory beyond its own key's reach
    assert client.get(mine.url(), headers=mine.headers).status_code in (200, 401)
