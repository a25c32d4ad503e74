"""Settings of the memory service: where its model and database live, and its request limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
    """One memory service: a model loaded once, a SQLite database, limits and an optional admin key."""

    db: Path | str = "larimar.db"
    """SQLite database file (created if missing; WAL mode)."""
    model: Path | str | None = None
    """Folder of a saved Larimar model; None loads the built-in model."""
    limits: Limits = field(default_factory=Limits)
    """Request limits."""
    admin_key: str | None = None
    """When set, creating, importing and listing all memories need `Authorization: Bearer <admin key>`."""

    def __post_init__(self) -> None:
        if self.admin_key is not None and len(self.admin_key) < 16:
            raise ValueError("admin key must have at least 16 characters; generate one with "
                             "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
