"""The PostgreSQL store (psycopg 3), shared by several server processes, and `open_store`,
which turns a --db value into a store."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .storage import HEAD, DatabaseError, SqliteStore, Store, describe

logger = logging.getLogger(__name__)

POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created TEXT NOT NULL,
    deleted TEXT,
    key_salt BYTEA NOT NULL,
    key_hash BYTEA NOT NULL,
    state BYTEA
);
CREATE TABLE IF NOT EXISTS heads (
    memory_id TEXT PRIMARY KEY REFERENCES memories(id),
    snapshot_seq BIGINT NOT NULL DEFAULT 0,
    head_seq BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS facts (
    seq BIGSERIAL PRIMARY KEY,
    memory_id TEXT NOT NULL REFERENCES memories(id),
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    paraphrases TEXT NOT NULL,
    created TEXT NOT NULL,
    forgotten TEXT,
    UNIQUE (memory_id, id)
);
CREATE TABLE IF NOT EXISTS log (
    seq BIGSERIAL PRIMARY KEY,
    memory_id TEXT NOT NULL REFERENCES memories(id),
    op TEXT NOT NULL,
    fact_id TEXT,
    data BYTEA
);
CREATE INDEX IF NOT EXISTS log_memory ON log (memory_id, seq);
"""
POSTGRES_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*):(?P<rest>.*)$", re.DOTALL)
_SCHEMA_LOCK = 0x4C41524D  # advisory lock id: replicas starting together create the tables once


def open_store(db: str | Path) -> Store:
    """The store a --db value names: `postgresql://...` (or `postgres://`), else a SQLite file path.

    Raises:
        DatabaseError: a URL of another kind (`mysql://...`, `sqlite:` with a bad path), a
            malformed PostgreSQL URL, or PostgreSQL without its driver installed.
    """
    if isinstance(db, Path):
        return SqliteStore(db)
    text = str(db).strip()
    if not text:
        raise DatabaseError("--db is empty; pass a SQLite file path (e.g. memories.db) or postgresql://user@host/dbname")
    match = _SCHEME.match(text)
    if match is None or len(match["scheme"]) == 1:  # no scheme (or a Windows drive letter): a file path
        return SqliteStore(Path(text))
    scheme, rest = match["scheme"].lower(), match["rest"]
    if scheme in POSTGRES_SCHEMES:
        if not rest.startswith("//"):
            raise DatabaseError(f"malformed PostgreSQL URL {describe(text)!r}; write postgresql://user:password@host:port/dbname")
        return PostgresStore(text)
    if scheme == "sqlite":
        path = rest[3:] if rest.startswith("///") else ""  # sqlite:///relative.db, sqlite:////absolute.db
        if not path.strip("/"):
            raise DatabaseError(f"{text!r} names no file; write sqlite:///relative/path.db, sqlite:////absolute/path.db "
                                "or just the path")
        return SqliteStore(Path(path))
    raise DatabaseError(f"unsupported database {describe(text)!r}: the scheme {scheme!r} is not supported; "
                        "pass a SQLite file path (e.g. memories.db) or postgresql://user@host/dbname")


class PostgresStore(Store):
    """A PostgreSQL database (psycopg 3), shareable by several server processes."""

    placeholder = "%s"
    kind = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__()
        try:
            import psycopg  # noqa: F401
        except ImportError as err:
            raise DatabaseError("PostgreSQL needs the psycopg driver: pip install 'psycopg[binary]>=3.1,<4' "
                                "(or pass a SQLite file path)") from err
        self.url = url
        with self._transaction(write=True) as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in filter(str.strip, POSTGRES_SCHEMA.split(";")):
                db.execute(statement)
        logger.info("store at %s", describe(url))

    def _db(self) -> Any:
        db = getattr(self._local, "db", None)
        if db is not None and (db.closed or db.broken):  # the server restarted or the link dropped: reconnect
            self._local.db = None
        return super()._db()

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            raise DatabaseError(f"cannot connect to {describe(self.url)}: {str(err).strip()}; check the URL "
                                "(postgresql://user:password@host:port/dbname) and that the server runs") from err

    def _lock_memory(self, db: Any, memory_id: str) -> int | None:
        row = self._one(db, HEAD + " FOR UPDATE OF h", (memory_id,))
        return None if row is None else int(row[0])

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        db = self._db()
        with db.transaction():
            if not write:  # one consistent view of the snapshot and the log
                db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield db
