"""Operations: Prometheus metrics at /metrics, JSON log lines."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from larimar.serve.observe import JsonFormatter, configure_json_logs
from tests.serve.conftest import MemoryHandle


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_count_requests_latencies_memories_and_facts(client: TestClient, memory: MemoryHandle) -> None:
    ids = memory.write("Paris is the capital of France.", "The cat sat on the mat.")
    client.delete(memory.url(f"/facts/{ids[0]}"), headers=memory.headers)
    client.post(memory.url("/ask"), json={"prompt": "Paris is", "max_new_tokens": 2}, headers=memory.headers)
    client.get("/nowhere")
    client.post(memory.url("/facts"), json={"facts": ["bad\x00"]}, headers=memory.headers)
    got = samples(client)
    route = "/memories/{memory_id}/facts"
    assert got[("larimar_requests_total", (("method", "POST"), ("route", route), ("status", "201")))] == 1
    assert got[("larimar_requests_total", (("method", "POST"), ("route", route), ("status", "422")))] == 1
    assert got[("larimar_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert got[("larimar_request_seconds_count", (("method", "POST"), ("route", "/memories/{memory_id}/ask")))] == 1
    assert got[("larimar_memories", ())] == 1 and got[("larimar_facts", ())] == 1
    assert not any(memory.id in str(labels) or memory.key in str(labels) for _, labels in got)


def test_json_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.makeLogRecord({"name": "larimar.serve.access", "levelname": "INFO", "msg": "request",
                                    "method": "GET", "route": "/health", "status": 200, "ms": 1.5})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "request" and entry["level"] == "info" and entry["logger"] == "larimar.serve.access"
    assert (entry["method"], entry["route"], entry["status"], entry["ms"]) == ("GET", "/health", 200, 1.5)
    assert entry["time"].endswith("+00:00")


def test_requests_are_logged_as_json(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    handler = configure_json_logs()
    try:
        client.get("/health")
    finally:
        root = logging.getLogger("larimar")
        root.removeHandler(handler)
        root.propagate = True
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert any(e["logger"] == "larimar.serve.access" and e["route"] == "/health" and e["status"] == 200 for e in lines)
