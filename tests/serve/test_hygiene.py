"""Input hygiene: control characters in texts get a 422; a --db that names no usable database is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from larimar.cli import main
from larimar.serve.postgres import PostgresStore, open_store
from larimar.serve.storage import DatabaseError, SqliteStore
from tests.serve.conftest import MemoryHandle
from tests.serve.test_app import error

FACT = "Paris is the capital of France."


@pytest.mark.parametrize("bad", ["Paris\x00 is nice.", "bell\x07", "esc \x1b[31m red", "cr\rhere", "\x1f"])
def test_control_characters_are_refused(client: TestClient, memory: MemoryHandle, bad: str) -> None:
    code = f"U+{ord(next(c for c in bad if ord(c) < 32)):04X}"
    cases = [("/facts", {"facts": [FACT, bad]}, "facts[1]"),
             ("/facts", {"facts": [FACT], "paraphrases": [[bad]]}, "paraphrases[0][0]"),
             ("/ask", {"prompt": bad}, "prompt"),
             ("/score", {"prompt": bad, "candidates": ["a"]}, "prompt"),
             ("/score", {"prompt": "Paris is", "candidates": ["a", bad]}, "candidates[1]")]
    for path, body, where in cases:
        error(client.post(memory.url(path), json=body, headers=memory.headers), 422, "invalid", where, code,
              "control characters")
    error(client.post("/memories", json={"name": bad}), 422, "invalid", "name", code)
    assert client.get(memory.url("/facts"), headers=memory.headers).json()["facts"] == []  # nothing stored


def test_tab_and_newline_are_allowed(memory: MemoryHandle) -> None:
    [fact_id] = memory.write("Paris\tis the capital\nof France.")
    facts = memory.client.get(memory.url("/facts"), headers=memory.headers).json()["facts"]
    assert [(f["id"], f["text"]) for f in facts] == [(fact_id, "Paris\tis the capital\nof France.")]


def test_empty_texts_are_refused(client: TestClient, memory: MemoryHandle) -> None:
    error(client.post(memory.url("/facts"), json={"facts": ["  "]}, headers=memory.headers), 422, "invalid", "facts[0] is empty")
    error(client.post(memory.url("/ask"), json={"prompt": " "}, headers=memory.headers), 422, "invalid", "prompt is empty")


@pytest.mark.parametrize(("db", "words"), [
    ("mysql://host/db", ["unsupported database", "'mysql'", "postgresql://"]),
    ("redis://localhost:6379", ["unsupported database", "'redis'"]),
    ("http://example.org/memories.db", ["unsupported database", "'http'"]),
    ("postgresql:/host/db", ["malformed PostgreSQL URL", "postgresql://user"]),
    ("postgres:host", ["malformed PostgreSQL URL"]),
    ("sqlite://", ["names no file"]),
    ("", ["--db is empty"]),
])
def test_unknown_or_malformed_db_is_refused(db: str, words: list[str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseError) as err:
        open_store(db)
    for word in words:
        assert word in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no file or folder named after the URL


def test_db_password_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatabaseError) as err:
        open_store("postgresql:/user:secret@host/db")
    assert "secret" not in str(err.value)


def test_paths_and_sqlite_urls_open_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_store("plain.db"), SqliteStore)
    assert isinstance(open_store(tmp_path / "sub" / "path.db"), SqliteStore)
    store = open_store(f"sqlite:///{tmp_path}/url.db")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "url.db"
    with pytest.raises(DatabaseError, match="is a folder"):
        open_store(str(tmp_path))


def test_not_a_database_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the memories you are looking for\n" * 100)
    with pytest.raises(DatabaseError, match="not a SQLite database"):
        open_store(str(path))


def test_postgres_unreachable_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="cannot connect to postgresql://u:\\*\\*\\*@127.0.0.1:1/db"):
        PostgresStore("postgresql://u:pw@127.0.0.1:1/db")


def test_serve_command_refuses_unknown_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--db", "mysql://host/db"]) == 2
    err = capsys.readouterr().err
    assert "larimar serve: error: unsupported database 'mysql://host/db'" in err
    assert list(tmp_path.iterdir()) == []
