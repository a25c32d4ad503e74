"""Fixtures: a tiny saved Larimar model (once per session), apps over fresh databases, clients."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import larimar
from larimar.serve import Limits, ServeConfig, create_app
from tests.editing.tiny_larimar import save_tiny_larimar
from tests.serve.postgres import PostgresServer, find_postgres

AppFactory = Callable[..., FastAPI]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_larimar(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="session")
def lm(model_dir: Path) -> larimar.Larimar:
    return larimar.load(model_dir)


@pytest.fixture
def make_app(lm: larimar.Larimar, tmp_path: Path) -> Iterator[AppFactory]:
    """make_app(db=..., admin_key=..., limits=..., **ServeConfig fields) -> an app sharing the session's model.

    The apps' services are closed after the test (their ask loops and snapshot threads stop), as
    a server's shutdown does; closing twice is harmless."""
    apps: list[FastAPI] = []

    def make(db: Path | str | None = None, admin_key: str | None = None, limits: Limits | None = None,
             **settings: Any) -> FastAPI:
        config = ServeConfig(db=db or tmp_path / "memories.db", admin_key=admin_key, limits=limits or Limits(),
                             **settings)
        apps.append(create_app(config, lm))
        return apps[-1]

    yield make
    for app in apps:
        app.state.service.close()


@pytest.fixture
def client(make_app: AppFactory) -> TestClient:
    return TestClient(make_app())


class MemoryHandle:
    """A memory created through the API, with its key in the headers."""

    def __init__(self, client: TestClient, name: str = "test") -> None:
        response = client.post("/memories", json={"name": name})
        assert response.status_code == 201, response.text
        body = response.json()
        self.client, self.id, self.key = client, body["id"], body["api_key"]
        self.headers = {"Authorization": f"Bearer {self.key}"}

    def url(self, suffix: str = "") -> str:
        return f"/memories/{self.id}{suffix}"

    def write(self, *facts: str) -> list[str]:
        response = self.client.post(self.url("/facts"), json={"facts": list(facts)}, headers=self.headers)
        assert response.status_code == 201, response.text
        return response.json()["ids"]


@pytest.fixture
def memory(client: TestClient) -> MemoryHandle:
    return MemoryHandle(client)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the session; skips (saying why) where PostgreSQL cannot run."""
    bin_dir, why = find_postgres()
    if bin_dir is None:
        pytest.skip(why)
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        server.stop()
        pytest.skip(f"could not start PostgreSQL: {err}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return postgres_server.new_database()
