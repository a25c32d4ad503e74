"""Persistence of the memory service: SQLite (a file, the default) or PostgreSQL (shared by replicas).

Tables:
    memories(id, name, created, deleted, key_salt, key_hash, state)
        `state` is the memory's latest snapshot, exactly as `Memory.save` writes it (safetensors bytes).
    heads(memory_id, snapshot_seq, head_seq)
        The log entry the snapshot was taken after, and the memory's last log entry. A small row of
        its own: a change updates it without rewriting (or reading past) the snapshot's megabytes.
    log(seq, memory_id, op, fact_id, data)
        One row per change after the snapshot: a write (op 'write', `data` holds the encoded items
        the update applied: latents, keys, scope embeddings and the facts) or a forget (op
        'forget', `fact_id`). Entries up to a new snapshot are dropped with it.
    facts(seq, memory_id, id, text, paraphrases, created, forgotten)
        The audit log: a forgotten fact keeps its row, with the time it was forgotten.

A memory's state is its snapshot followed by its log entries replayed in order. A change appends
its log entry and its audit rows and moves `head_seq` in one transaction (small: no memory state),
so a crash leaves either all or none of it. Changes of one memory are serialised by the database
(SQLite: one writer at a time; PostgreSQL: `SELECT ... FOR UPDATE` on the memory's heads row).

Databases written before the log existed load as they are: their `state` is the snapshot of a
memory whose log is empty (`Store` adds the missing tables and rows on open).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .auth import HashedKey

logger = logging.getLogger(__name__)

SQLITE_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS heads (
    memory_id TEXT PRIMARY KEY REFERENCES memories(id),
    snapshot_seq INTEGER NOT NULL DEFAULT 0,
    head_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    memory_id TEXT NOT NULL REFERENCES memories(id),
    op TEXT NOT NULL,
    fact_id TEXT,
    data BLOB
);
CREATE INDEX IF NOT EXISTS log_memory ON log (memory_id, seq);
"""



HEAD = ("SELECT h.head_seq FROM heads h JOIN memories m ON m.id = h.memory_id "
        "WHERE h.memory_id = ? AND m.deleted IS NULL")


class DatabaseError(ValueError):
    """A --db value that names no database this service can use (the message says what to pass)."""


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


@dataclass(frozen=True)
class LogEntry:
    """One change after a snapshot: a write (`data`: encoded items) or a forget (`fact_id`)."""

    seq: int
    op: str
    fact_id: str | None
    data: bytes | None


@dataclass(frozen=True)
class Loaded:
    """What rebuilds a memory: a snapshot (None: start from the caller's cached state) and the log after it."""

    snapshot: bytes | None
    snapshot_seq: int
    head_seq: int
    entries: list[LogEntry]


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def describe(db: str | Path) -> str:
    """`db` for logs: a PostgreSQL URL without its password."""
    text = str(db)
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*:/*[^:/@]*:)[^@]*@", r"\1***@", text)


class Store:
    """The database of one service (thread-safe: one connection per thread). Use `open_store`."""

    placeholder = "?"
    kind = "base"

    def __init__(self) -> None:
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()

    # ----------------------------------------------------------------------------- backend hooks
    def _connect(self) -> Any:
        raise NotImplementedError

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _lock_memory(self, db: Any, memory_id: str) -> int | None:
        """Inside a write transaction: the memory's head_seq with the memory locked, None if absent or deleted."""
        row = self._one(db, HEAD, (memory_id,))
        return None if row is None else int(row[0])

    # ----------------------------------------------------------------------------- plumbing
    def _db(self) -> Any:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    def _sql(self, query: str) -> str:
        return query if self.placeholder == "?" else query.replace("?", self.placeholder)

    def _exec(self, db: Any, query: str, params: Sequence[Any] = ()) -> Any:
        return db.execute(self._sql(query), tuple(params))

    def _one(self, db: Any, query: str, params: Sequence[Any] = ()) -> Any:
        return self._exec(db, query, params).fetchone()

    def _all(self, db: Any, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self._exec(db, query, params).fetchall())

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for db in connections:
            try:
                db.close()
            except Exception:  # closing what another thread may still hold
                logger.debug("closing a connection failed", exc_info=True)
        self._local = threading.local()

    # ----------------------------------------------------------------------------- memories
    def create_memory(self, memory_id: str, name: str, created: datetime, key: HashedKey, state: bytes,
                      facts: Sequence[FactRow] = ()) -> None:
        """Add a memory with its first snapshot (and the facts of an imported file) in one transaction."""
        with self._transaction(write=True) as db:
            self._exec(db, "INSERT INTO memories (id, name, created, key_salt, key_hash, state) VALUES (?, ?, ?, ?, ?, ?)",
                       (memory_id, name, created.isoformat(), key.salt, key.digest, state))
            self._exec(db, "INSERT INTO heads (memory_id, snapshot_seq, head_seq) VALUES (?, 0, 0)", (memory_id,))
            self._insert_facts(db, memory_id, facts)

    def memories(self, ids: Sequence[str] | None = None) -> list[MemoryRow]:
        """Memories not deleted, oldest first; only `ids` when given."""
        rows = self._all(self._db(),
                         "SELECT m.id, m.name, m.created, COUNT(f.id) FROM memories m "
                         "LEFT JOIN facts f ON f.memory_id = m.id AND f.forgotten IS NULL "
                         "WHERE m.deleted IS NULL GROUP BY m.id, m.name, m.created ORDER BY m.created, m.id")
        wanted = None if ids is None else set(ids)
        return [MemoryRow(i, n, datetime.fromisoformat(c), int(k)) for i, n, c, k in rows
                if wanted is None or i in wanted]

    def count(self) -> tuple[int, int]:
        """(memories not deleted, facts not forgotten in them)."""
        row = self._one(self._db(), "SELECT COUNT(DISTINCT m.id), COUNT(f.id) FROM memories m "
                                    "LEFT JOIN facts f ON f.memory_id = m.id AND f.forgotten IS NULL "
                                    "WHERE m.deleted IS NULL")
        return int(row[0]), int(row[1])

    def key(self, memory_id: str) -> HashedKey | None:
        """The stored key hash of a memory not deleted."""
        row = self._one(self._db(), "SELECT key_salt, key_hash FROM memories WHERE id = ? AND deleted IS NULL",
                        (memory_id,))
        return None if row is None else HashedKey(bytes(row[0]), bytes(row[1]))

    def head(self, memory_id: str) -> int | None:
        """The memory's last log entry (0 before any), None when there is no such memory (or it was deleted)."""
        row = self._one(self._db(), HEAD, (memory_id,))
        return None if row is None else int(row[0])

    def load(self, memory_id: str, after: int | None = None) -> Loaded | None:
        """The snapshot and the log after it, read consistently; None for no memory (or a deleted one).

        With `after` (the log entry a caller's cached state ends at) and no snapshot taken since, only
        the entries after it (`snapshot` None).
        """
        with self._transaction(write=False) as db:
            return self._load(db, memory_id, after)

    def _load(self, db: Any, memory_id: str, after: int | None) -> Loaded | None:
        row = self._one(db, "SELECT h.snapshot_seq, h.head_seq FROM heads h JOIN memories m ON m.id = h.memory_id "
                            "WHERE h.memory_id = ? AND m.deleted IS NULL", (memory_id,))
        if row is None:
            return None
        snapshot_seq, head_seq = int(row[0]), int(row[1])
        snapshot = None
        if after is None or after < snapshot_seq:
            state = self._one(db, "SELECT state FROM memories WHERE id = ?", (memory_id,))
            snapshot, after = bytes(state[0]), snapshot_seq
        entries = [LogEntry(int(s), op, f, None if d is None else bytes(d)) for s, op, f, d in self._all(
            db, "SELECT seq, op, fact_id, data FROM log WHERE memory_id = ? AND seq > ? ORDER BY seq", (memory_id, after))]
        return Loaded(snapshot, snapshot_seq, head_seq, entries)

    def snapshot(self, memory_id: str) -> tuple[bytes, int] | None:
        """The latest snapshot and the log entry it was taken after."""
        row = self._one(self._db(), "SELECT m.state, h.snapshot_seq FROM memories m JOIN heads h ON h.memory_id = m.id "
                                    "WHERE m.id = ? AND m.deleted IS NULL", (memory_id,))
        return None if row is None else (bytes(row[0]), int(row[1]))

    def save_snapshot(self, memory_id: str, seq: int, state: bytes) -> bool:
        """Store `state` (the memory after log entry `seq`) as its snapshot and drop the log up to it.

        Does nothing (False) when a newer snapshot is stored, or the memory is gone.
        """
        with self._transaction(write=True) as db:
            head = self._lock_memory(db, memory_id)
            row = self._one(db, "SELECT snapshot_seq FROM heads WHERE memory_id = ?", (memory_id,))
            if head is None or row is None or int(row[0]) >= seq or seq > head:
                return False
            self._exec(db, "UPDATE memories SET state = ? WHERE id = ?", (state, memory_id))
            self._exec(db, "UPDATE heads SET snapshot_seq = ? WHERE memory_id = ?", (seq, memory_id))
            self._exec(db, "DELETE FROM log WHERE memory_id = ? AND seq <= ?", (memory_id, seq))
        return True

    def delete_memory(self, memory_id: str, when: datetime) -> None:
        """Drop a memory's state, log and key; its facts stay in the audit log, forgotten at `when`."""
        with self._transaction(write=True) as db:
            self._exec(db, "UPDATE memories SET deleted = ?, state = NULL, key_hash = ? WHERE id = ?",
                       (when.isoformat(), b"", memory_id))
            self._exec(db, "DELETE FROM log WHERE memory_id = ?", (memory_id,))
            self._exec(db, "UPDATE facts SET forgotten = ? WHERE memory_id = ? AND forgotten IS NULL",
                       (when.isoformat(), memory_id))

    # ----------------------------------------------------------------------------- changes
    @contextmanager
    def change(self, memory_id: str) -> Iterator[Change]:
        """A transaction that changes one memory, with the memory locked; commits on leaving.

        Raises:
            LookupError: no such memory, or it was deleted.
        """
        with self._transaction(write=True) as db:
            head = self._lock_memory(db, memory_id)
            if head is None:
                raise LookupError(f"memory {memory_id} does not exist or was deleted")
            yield Change(self, db, memory_id, head)

    # ----------------------------------------------------------------------------- facts
    def facts(self, memory_id: str, include_forgotten: bool = False) -> list[FactRow]:
        """The fact log of a memory in writing order; forgotten facts only when asked."""
        query = "SELECT id, text, created, forgotten, paraphrases FROM facts WHERE memory_id = ?"
        if not include_forgotten:
            query += " AND forgotten IS NULL"
        rows = self._all(self._db(), query + " ORDER BY seq", (memory_id,))
        return [FactRow(i, t, datetime.fromisoformat(c), _time(f), tuple(json.loads(p))) for i, t, c, f, p in rows]

    def fact(self, memory_id: str, fact_id: str) -> FactRow | None:
        """One entry of the fact log, forgotten or not."""
        row = self._one(self._db(),
                        "SELECT id, text, created, forgotten, paraphrases FROM facts WHERE memory_id = ? AND id = ?",
                        (memory_id, fact_id))
        return None if row is None else FactRow(row[0], row[1], datetime.fromisoformat(row[2]), _time(row[3]),
                                                tuple(json.loads(row[4])))

    def _insert_facts(self, db: Any, memory_id: str, facts: Sequence[FactRow]) -> None:
        if facts:
            db.cursor().executemany(self._sql("INSERT INTO facts (memory_id, id, text, paraphrases, created) VALUES (?, ?, ?, ?, ?)"),
                           [(memory_id, f.id, f.text, json.dumps(list(f.paraphrases)), f.created.isoformat())
                            for f in facts])


class Change:
    """One memory's change in progress (see `Store.change`): its log entry and audit rows."""

    def __init__(self, store: Store, db: Any, memory_id: str, head: int) -> None:
        self.store, self.db, self.memory_id = store, db, memory_id
        self.head = head
        """The memory's last log entry when the change began (with the memory locked)."""

    def load(self, after: int | None) -> Loaded:
        """The log after `after` (and the snapshot if needed), as committed before this change."""
        loaded = self.store._load(self.db, self.memory_id, after)
        assert loaded is not None  # the memory is locked and exists
        return loaded

    def write(self, data: bytes, facts: Sequence[FactRow]) -> int:
        """Append a write (its encoded items) and log its facts; returns the new log entry."""
        self.store._insert_facts(self.db, self.memory_id, facts)
        return self._append("write", None, data)

    def forget(self, fact_id: str, when: datetime) -> int:
        """Append a forget and mark the fact forgotten in the audit log; returns the new log entry."""
        self.store._exec(self.db, "UPDATE facts SET forgotten = ? WHERE memory_id = ? AND id = ?",
                         (when.isoformat(), self.memory_id, fact_id))
        return self._append("forget", fact_id, None)

    def _append(self, op: str, fact_id: str | None, data: bytes | None) -> int:
        store = self.store
        (seq,) = store._one(self.db, "INSERT INTO log (memory_id, op, fact_id, data) VALUES (?, ?, ?, ?) RETURNING seq",
                            (self.memory_id, op, fact_id, data))
        updated = store._exec(self.db, "UPDATE heads SET head_seq = ? WHERE memory_id = ?", (seq, self.memory_id))
        if updated.rowcount != 1:
            raise LookupError(f"memory {self.memory_id} does not exist or was deleted")
        self.head = int(seq)
        return self.head


class SqliteStore(Store):
    """A SQLite file in WAL mode with synchronous=FULL: a committed change survives a crash."""

    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise DatabaseError(f"--db {self.path} is a folder; pass a database file path, e.g. {self.path / 'memories.db'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db()
        db.executescript(SQLITE_SCHEMA)
        self._migrate(db)
        logger.info("store at %s (journal mode %s)", self.path, db.execute("PRAGMA journal_mode").fetchone()[0])

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as err:
            raise DatabaseError(f"{self.path} is not a SQLite database this service can open ({err}); "
                                "pass a new file path or a database written by larimar serve") from err
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Databases from before the log: each memory's `state` becomes the snapshot of an empty log."""
        added = db.execute("INSERT INTO heads (memory_id, snapshot_seq, head_seq) "
                           "SELECT id, 0, 0 FROM memories WHERE id NOT IN (SELECT memory_id FROM heads)").rowcount
        if added:
            logger.info("migrated %s: %d memories now have a log", "the database", added)

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
