"""Per-memory API keys: `lmk_<memory id>.<secret>`, stored as a salted PBKDF2-SHA256 hash.

The memory id inside the key says which stored hash to check; a key never opens another memory.
Verified keys are remembered in-process (by their SHA-256) so each request does not pay the
key-derivation cost; deleting a memory drops them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass

ITERATIONS = 100_000
"""PBKDF2 rounds; the secret has 256 random bits, so this is defence in depth, not the main guard."""
KEY_PATTERN = re.compile(r"^lmk_(?P<memory>[0-9a-f]{16})\.(?P<secret>[A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class HashedKey:
    """What the database keeps of a key."""

    salt: bytes
    digest: bytes


def new_memory_id() -> str:
    """A random memory id: 16 hex characters."""
    return secrets.token_hex(8)


def new_key(memory_id: str) -> str:
    """A fresh key for a memory; shown once to its creator."""
    return f"lmk_{memory_id}.{secrets.token_urlsafe(32)}"


def hash_key(key: str, salt: bytes | None = None) -> HashedKey:
    """Salted PBKDF2-SHA256 of a key."""
    salt = secrets.token_bytes(16) if salt is None else salt
    return HashedKey(salt, hashlib.pbkdf2_hmac("sha256", key.encode(), salt, ITERATIONS))


def key_memory(key: str) -> str | None:
    """The memory id a well-formed key names, else None."""
    match = KEY_PATTERN.match(key)
    return match["memory"] if match else None


def matches(key: str, stored: HashedKey) -> bool:
    """Whether `key` hashes to `stored` (constant-time comparison)."""
    return hmac.compare_digest(hash_key(key, stored.salt).digest, stored.digest)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time equality of two secrets (the admin key)."""
    return hmac.compare_digest(given.encode(), expected.encode())


class VerifiedKeys:
    """SHA-256 of keys already verified, per memory (thread-safe)."""

    def __init__(self) -> None:
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def memory_of(self, key: str) -> str | None:
        """The memory a key was verified for, if it was."""
        with self._lock:
            return self._known.get(self._digest(key))

    def add(self, key: str, memory_id: str) -> None:
        with self._lock:
            self._known[self._digest(key)] = memory_id

    def drop_memory(self, memory_id: str) -> None:
        with self._lock:
            self._known = {d: m for d, m in self._known.items() if m != memory_id}
