"""Settings of the memory service: where its model and database live, and its request limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ALLOWED_CONTROLS = frozenset("\t\n")
"""Control characters a fact or a question may hold; other C0 codes (NUL, ESC, ...) are refused."""


def control_characters(text: str) -> list[str]:
    """The C0 control characters in `text` other than tab and newline, as U+XXXX codes."""
    return sorted({f"U+{ord(c):04X}" for c in text if ord(c) < 0x20 and c not in ALLOWED_CONTROLS})


@dataclass(frozen=True)
class Limits:
    """What one request may carry; larger requests get a 413 or 422 JSON error naming the limit."""

    max_request_bytes: int = 64 * 1024
    """Body size of any request except an import."""
    max_import_bytes: int = 64 * 1024 * 1024
    """Body size of a memory file sent to POST /memories/import."""
    max_fact_chars: int = 1000
    """Characters in one fact or paraphrase (the encoder's token limit applies too)."""
    max_batch: int = 64
    """Facts in one write."""
    max_paraphrases: int = 8
    """Paraphrases of one fact."""
    max_prompt_chars: int = 2000
    """Characters in a prompt to ask or score."""
    max_new_tokens: int = 128
    """Tokens one answer may generate."""
    max_candidates: int = 16
    """Candidates in one score request."""
    max_name_chars: int = 100
    """Characters in a memory's name."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer; got {value!r}")


@dataclass(frozen=True)
class ServeConfig:
    """One memory service: a model loaded once, a database (SQLite or PostgreSQL), limits, an optional
    admin key, and how often memories are snapshotted and asks batched."""

    db: Path | str = "larimar.db"
    """A SQLite database file (created if missing; WAL mode), or `postgresql://user:password@host/dbname`
    for a database that several server processes share. Other URLs are refused."""
    model: Path | str | None = None
    """Folder of a saved Larimar model; None loads the built-in model."""
    limits: Limits = field(default_factory=Limits)
    """Request limits."""
    admin_key: str | None = None
    """When set, creating, importing and listing all memories need `Authorization: Bearer <admin key>`."""
    snapshot_every: int = 100
    """A memory's state is stored anew (a snapshot) after this many changes; between snapshots a
    change stores only its log entry, and loading replays at most this many."""
    snapshot_seconds: float = 60.0
    """A memory's state is also stored once its oldest change not in a snapshot is this many seconds
    old (checked about every second), so a memory written rarely is not left as a long log; 0: by count only."""
    ask_batch: int = 8
    """Most concurrent asks decoded together (1: no batching)."""
    ask_wait_ms: float = 10.0
    """How long the first ask of a batch waits for others to join it (only while asks come
    concurrently; a lone client waits at most 1 ms)."""

    def __post_init__(self) -> None:
        if not isinstance(self.snapshot_every, int) or self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be a positive integer; got {self.snapshot_every!r}")
        if isinstance(self.snapshot_seconds, bool) or not isinstance(self.snapshot_seconds, int | float) \
                or not 0 <= self.snapshot_seconds <= 86400:
            raise ValueError(f"snapshot_seconds must be in [0, 86400] (0: by count only); got {self.snapshot_seconds!r}")
        if not isinstance(self.ask_batch, int) or self.ask_batch < 1:
            raise ValueError(f"ask_batch must be a positive integer; got {self.ask_batch!r}")
        if not 0 <= self.ask_wait_ms <= 1000:
            raise ValueError(f"ask_wait_ms must be in [0, 1000]; got {self.ask_wait_ms!r}")
        if self.admin_key is not None and len(self.admin_key) < 16:
            raise ValueError("admin key must have at least 16 characters; generate one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
