"""SQLite persistence (WAL): memories with their serialised state, and the fact log.

Tables:
    memories(id, name, created, deleted, key_salt, key_hash, state)
        `state` holds the memory exactly as `Memory.save` writes it (safetensors bytes), so an
        export is a file `larimar.load_memory` reads and a restart restores bit-identical tensors.
    facts(seq, memory_id, id, text, paraphrases, created, forgotten)
        The audit log: a forgotten fact keeps its row, with the time it was forgotten.

Every change of a memory writes its new state and its fact-log rows in one transaction, so a
crash leaves either both or neither. Each thread uses its own connection.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .auth import HashedKey

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created TEXT NOT NULL,
    deleted TEXT,
    key_salt BLOB NOT NULL,
    key_hash BLOB NOT NULL,
    state BLOB
);
CREATE TABLE IF NOT EXISTS facts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    memory_id TEXT NOT NULL REFERENCES memories(id),
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    paraphrases TEXT NOT NULL,
    created TEXT NOT NULL,
    forgotten TEXT,
    UNIQUE (memory_id, id)
);
"""


@dataclass(frozen=True)
class MemoryRow:
    """A memory as listed: no state, no key."""

    id: str
    name: str
    created: datetime
    facts: int
    """Facts not forgotten."""


@dataclass(frozen=True)
class FactRow:
    """One entry of the fact log."""

    id: str
    text: str
    created: datetime
    forgotten: datetime | None = None
    paraphrases: tuple[str, ...] = ()


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class Store:
    """The database of one service. Thread-safe: one connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(SCHEMA)
        logger.info("store at %s (journal mode %s)", self.path, self._db().execute("PRAGMA journal_mode").fetchone()[0])

    # ----------------------------------------------------------------------------- connections
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ----------------------------------------------------------------------------- memories
    def create_memory(self, memory_id: str, name: str, created: datetime, key: HashedKey, state: bytes,
                      facts: Sequence[FactRow] = ()) -> None:
        """Add a memory (with the facts of an imported file) in one transaction."""
        with self._transaction() as db:
            db.execute("INSERT INTO memories (id, name, created, key_salt, key_hash, state) VALUES (?, ?, ?, ?, ?, ?)",
                       (memory_id, name, created.isoformat(), key.salt, key.digest, state))
            self._insert_facts(db, memory_id, facts)

    def memories(self, ids: Sequence[str] | None = None) -> list[MemoryRow]:
        """Memories not deleted, oldest first; only `ids` when given."""
        rows = self._db().execute(
            "SELECT m.id, m.name, m.created, COUNT(f.id) FROM memories m "
            "LEFT JOIN facts f ON f.memory_id = m.id AND f.forgotten IS NULL "
            "WHERE m.deleted IS NULL GROUP BY m.id ORDER BY m.created, m.id"
        ).fetchall()
        wanted = None if ids is None else set(ids)
        return [MemoryRow(i, n, datetime.fromisoformat(c), k) for i, n, c, k in rows if wanted is None or i in wanted]

    def key(self, memory_id: str) -> HashedKey | None:
        """The stored key hash of a memory not deleted."""
        row = self._db().execute(
            "SELECT key_salt, key_hash FROM memories WHERE id = ? AND deleted IS NULL", (memory_id,)).fetchone()
        return None if row is None else HashedKey(row[0], row[1])

    def state(self, memory_id: str) -> bytes | None:
        """The serialised memory, None when there is no such memory (or it was deleted)."""
        row = self._db().execute(
            "SELECT state FROM memories WHERE id = ? AND deleted IS NULL", (memory_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def delete_memory(self, memory_id: str, when: datetime) -> None:
        """Drop a memory's state and key; its facts stay in the log, forgotten at `when`."""
        with self._transaction() as db:
            db.execute("UPDATE memories SET deleted = ?, state = NULL, key_hash = x'' WHERE id = ?",
                       (when.isoformat(), memory_id))
            db.execute("UPDATE facts SET forgotten = ? WHERE memory_id = ? AND forgotten IS NULL",
                       (when.isoformat(), memory_id))

    # ----------------------------------------------------------------------------- facts
    def add_facts(self, memory_id: str, facts: Sequence[FactRow], state: bytes) -> None:
        """Log written facts and store the memory that holds them, atomically."""
        with self._transaction() as db:
            self._insert_facts(db, memory_id, facts)
            self._set_state(db, memory_id, state)

    def forget_fact(self, memory_id: str, fact_id: str, when: datetime, state: bytes) -> None:
        """Mark a fact forgotten and store the memory without it, atomically."""
        with self._transaction() as db:
            db.execute("UPDATE facts SET forgotten = ? WHERE memory_id = ? AND id = ?",
                       (when.isoformat(), memory_id, fact_id))
            self._set_state(db, memory_id, state)

    def facts(self, memory_id: str, include_forgotten: bool = False) -> list[FactRow]:
        """The fact log of a memory in writing order; forgotten facts only when asked."""
        query = "SELECT id, text, created, forgotten, paraphrases FROM facts WHERE memory_id = ?"
        if not include_forgotten:
            query += " AND forgotten IS NULL"
        rows = self._db().execute(query + " ORDER BY seq", (memory_id,)).fetchall()
        return [FactRow(i, t, datetime.fromisoformat(c), _time(f), tuple(json.loads(p))) for i, t, c, f, p in rows]

    def fact(self, memory_id: str, fact_id: str) -> FactRow | None:
        """One entry of the fact log, forgotten or not."""
        row = self._db().execute(
            "SELECT id, text, created, forgotten, paraphrases FROM facts WHERE memory_id = ? AND id = ?",
            (memory_id, fact_id)).fetchone()
        return None if row is None else FactRow(row[0], row[1], datetime.fromisoformat(row[2]), _time(row[3]),
                                                tuple(json.loads(row[4])))

    # ----------------------------------------------------------------------------- internals
    @staticmethod
    def _insert_facts(db: sqlite3.Connection, memory_id: str, facts: Sequence[FactRow]) -> None:
        db.executemany(
            "INSERT INTO facts (memory_id, id, text, paraphrases, created) VALUES (?, ?, ?, ?, ?)",
            [(memory_id, f.id, f.text, json.dumps(list(f.paraphrases)), f.created.isoformat()) for f in facts],
        )

    @staticmethod
    def _set_state(db: sqlite3.Connection, memory_id: str, state: bytes) -> None:
        updated = db.execute("UPDATE memories SET state = ? WHERE id = ? AND deleted IS NULL", (state, memory_id))
        if updated.rowcount != 1:
            raise LookupError(f"memory {memory_id} does not exist or was deleted")
