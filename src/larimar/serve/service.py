"""The memory service behind the HTTP routes: a thin layer over `Larimar` and `Memory`.

One `Larimar` model per process. Memories live in the `Store` and, once used, in a cache.
A change works on a copy of the cached memory, commits the copy's state and its fact-log rows in
one transaction, and only then replaces the cached memory: readers always see a consistent,
committed memory and never wait for writers. Changes to one memory are serialised by its lock.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..editing import Answer, Fact, Larimar, Memory
from . import auth
from .config import Limits
from .errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from .storage import FactRow, MemoryRow, Store

logger = logging.getLogger(__name__)

DEFAULT_NEW_TOKENS = 20
"""Tokens an answer generates when the request does not say."""


@dataclass(frozen=True)
class Created:
    """A new memory and its API key (the only time the key is shown)."""

    memory: MemoryRow
    api_key: str


@dataclass(frozen=True)
class Scored:
    """Mean token NLL per candidate, and how the scope detector routed the prompt."""

    scores: list[float]
    in_scope: bool
    fact_id: str | None
    similarity: float | None


def memory_bytes(memory: Memory) -> bytes:
    """The memory as `Memory.save` writes it."""
    with tempfile.TemporaryDirectory(prefix="larimar-serve-") as folder:
        path = Path(folder) / "memory.safetensors"
        memory.save(path)
        return path.read_bytes()


def memory_from_bytes(lm: Larimar, data: bytes) -> Memory:
    """The memory serialised in `data` (a `Memory.save` file), for this model; ValueError otherwise."""
    with tempfile.TemporaryDirectory(prefix="larimar-serve-") as folder:
        path = Path(folder) / "memory.safetensors"
        path.write_bytes(data)
        return lm.load_memory(path)


def _row(fact: Fact) -> FactRow:
    return FactRow(fact.id, fact.text, fact.created, None, fact.paraphrases)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class MemoryService:
    """Memories of one model, persisted in one store, guarded by per-memory API keys."""

    def __init__(self, lm: Larimar, store: Store, limits: Limits, admin_key: str | None = None) -> None:
        self.lm, self.store, self.limits, self.admin_key = lm, store, limits, admin_key
        self._memories: dict[str, Memory] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()
        self._verified = auth.VerifiedKeys()

    # ----------------------------------------------------------------------------- auth
    def authenticate(self, key: str | None, memory_id: str) -> None:
        """Allow a request on `memory_id` only with that memory's key.

        Raises:
            Unauthorized: no key, or a key that is not valid for any memory.
            Forbidden: a valid key of another memory.
        """
        owner = self.key_owner(key)
        if owner != memory_id:
            raise Forbidden(f"this API key belongs to memory {owner}, not {memory_id}; "
                            "each memory has its own key")

    def key_owner(self, key: str | None) -> str:
        """The memory a valid key belongs to; Unauthorized otherwise."""
        if not key:
            raise Unauthorized("missing API key; send 'Authorization: Bearer <key>' (the key returned when "
                               "the memory was created)")
        known = self._verified.memory_of(key)
        if known is not None:
            return known
        memory_id = auth.key_memory(key)
        stored = None if memory_id is None else self.store.key(memory_id)
        if memory_id is None or stored is None or not auth.matches(key, stored):
            raise Unauthorized("invalid API key; use the key returned when the memory was created")
        self._verified.add(key, memory_id)
        return memory_id

    def is_admin(self, key: str | None) -> bool:
        """Whether `key` is the admin key (never true when the service has none)."""
        return self.admin_key is not None and key is not None and auth.same_secret(key, self.admin_key)

    def check_admin(self, key: str | None, action: str) -> None:
        """Creating and importing need the admin key when the service has one."""
        if self.admin_key is not None and not self.is_admin(key):
            raise Unauthorized(f"{action} needs the admin key of this server: 'Authorization: Bearer <admin key>'")

    # ----------------------------------------------------------------------------- memories
    def create(self, name: str) -> Created:
        """A new empty memory and its key."""
        return self._create(name, self.lm.new_memory())

    def import_memory(self, name: str, data: bytes) -> Created:
        """A new memory from a file written by `Memory.save` or exported by this service."""
        try:
            memory = memory_from_bytes(self.lm, data)
        except ValueError as err:
            raise Invalid(f"not a memory file this model can read: {err}") from err
        return self._create(name, memory)

    def _create(self, name: str, memory: Memory) -> Created:
        name = self._check_name(name)
        memory_id = auth.new_memory_id()
        key = auth.new_key(memory_id)
        created = _now()
        self.store.create_memory(memory_id, name, created, auth.hash_key(key), memory_bytes(memory),
                                 [_row(f) for f in memory.facts()])
        self._cache(memory_id, memory)
        logger.info("created memory %s (%s) with %d facts", memory_id, name, len(memory))
        return Created(MemoryRow(memory_id, name, created, len(memory)), key)

    def memories(self, ids: Sequence[str] | None = None) -> list[MemoryRow]:
        """Memories not deleted (only `ids` when given)."""
        return self.store.memories(ids)

    def info(self, memory_id: str) -> MemoryRow:
        rows = self.store.memories([memory_id])
        if not rows:
            raise NotFound(f"no memory {memory_id}")
        return rows[0]

    def delete(self, memory_id: str) -> None:
        """Delete a memory: its state and key go; its facts stay in the audit log, forgotten now."""
        with self._lock(memory_id):
            self._memory(memory_id)
            self.store.delete_memory(memory_id, _now())
            self._cache(memory_id, None)
            self._verified.drop_memory(memory_id)
        logger.info("deleted memory %s", memory_id)

    def export(self, memory_id: str) -> bytes:
        """The memory file (safetensors, as `Memory.save` writes it)."""
        state = self.store.state(memory_id)
        if state is None:
            raise NotFound(f"no memory {memory_id}")
        return state

    # ----------------------------------------------------------------------------- facts
    def write(self, memory_id: str, facts: Sequence[str], paraphrases: Sequence[Sequence[str]] | None) -> list[FactRow]:
        """Write a batch of facts; returns their log entries (with ids) once they are durable."""
        self._check_batch(facts, paraphrases)
        with self._lock(memory_id):
            memory = self._copy(self._memory(memory_id))
            try:
                ids = memory.write(list(facts), None if paraphrases is None else [list(p) for p in paraphrases])
            except ValueError as err:
                raise Invalid(str(err)) from err
            written = {f.id: f for f in memory.facts()}
            rows = [_row(written[i]) for i in ids]
            self.store.add_facts(memory_id, rows, memory_bytes(memory))
            self._cache(memory_id, memory)
        logger.debug("memory %s: wrote %d facts", memory_id, len(rows))
        return rows

    def forget(self, memory_id: str, fact_id: str) -> FactRow:
        """Forget a fact; its log entry stays, with the time it was forgotten."""
        with self._lock(memory_id):
            memory = self._copy(self._memory(memory_id))
            logged = self.store.fact(memory_id, fact_id)
            if logged is None:
                raise NotFound(f"no fact {fact_id} in memory {memory_id}")
            if logged.forgotten is not None:
                raise Conflict(f"fact {fact_id} was already forgotten at {logged.forgotten.isoformat()}")
            memory.forget(fact_id)
            when = _now()
            self.store.forget_fact(memory_id, fact_id, when, memory_bytes(memory))
            self._cache(memory_id, memory)
        return FactRow(logged.id, logged.text, logged.created, when, logged.paraphrases)

    def facts(self, memory_id: str, include_forgotten: bool = False) -> list[FactRow]:
        """The fact log of a memory."""
        self.info(memory_id)
        return self.store.facts(memory_id, include_forgotten)

    def fact(self, memory_id: str, fact_id: str) -> FactRow:
        row = self.store.fact(memory_id, fact_id)
        if row is None:
            raise NotFound(f"no fact {fact_id} in memory {memory_id}")
        return row

    def fact_text(self, memory_id: str, fact_id: str | None) -> str | None:
        """The text of a logged fact (None for None)."""
        row = None if fact_id is None else self.store.fact(memory_id, fact_id)
        return None if row is None else row.text

    # ----------------------------------------------------------------------------- queries
    def ask(self, memory_id: str, prompt: str, max_new_tokens: int | None, scope_threshold: float | None) -> Answer:
        """Generate an answer, conditioned on the memory when the prompt is in scope."""
        self._check_prompt(prompt)
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_NEW_TOKENS, self.limits.max_new_tokens)
        if not 1 <= max_new_tokens <= self.limits.max_new_tokens:
            raise Invalid(f"max_new_tokens must be in [1, {self.limits.max_new_tokens}]; got {max_new_tokens}")
        memory = self._memory(memory_id)
        try:
            return self.lm.ask(prompt, memory, max_new_tokens=max_new_tokens, scope_threshold=scope_threshold)
        except ValueError as err:
            raise Invalid(str(err)) from err

    def score(self, memory_id: str, prompt: str, candidates: Sequence[str], scope_threshold: float | None) -> Scored:
        """Mean token NLL of each candidate continuation (lower is likelier)."""
        self._check_prompt(prompt)
        self._check_candidates(candidates)
        memory = self._memory(memory_id)
        try:
            decision = self.lm.scope(prompt, memory, scope_threshold)
            scores = self.lm.score(prompt, list(candidates), memory, scope_threshold)
        except ValueError as err:
            raise Invalid(str(err)) from err
        return Scored(scores, decision.in_scope, decision.fact_id, decision.similarity)

    # ----------------------------------------------------------------------------- internals
    def _lock(self, memory_id: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(memory_id, threading.RLock())

    def _memory(self, memory_id: str) -> Memory:
        """The committed memory (cached after its first use)."""
        memory = self._memories.get(memory_id)
        if memory is not None:
            return memory
        with self._lock(memory_id):  # a load never interleaves with a change or a delete
            memory = self._memories.get(memory_id)
            if memory is not None:
                return memory
            state = self.store.state(memory_id)
            if state is None:
                raise NotFound(f"no memory {memory_id}")
            try:
                memory = memory_from_bytes(self.lm, state)
            except ValueError as err:
                raise Conflict(f"memory {memory_id} cannot be used with this model: {err}") from err
            self._cache(memory_id, memory)
            return memory

    def _cache(self, memory_id: str, memory: Memory | None) -> None:
        with self._guard:
            if memory is None:
                self._memories.pop(memory_id, None)
            else:
                self._memories[memory_id] = memory

    @staticmethod
    def _copy(memory: Memory) -> Memory:
        """A memory equal to `memory` that can change without touching it (tensors are never mutated)."""
        return Memory(memory.model, memory.state, memory.items, memory.facts())

    def _check_name(self, name: str) -> str:
        name = name.strip()
        if len(name) > self.limits.max_name_chars:
            raise Invalid(f"name has {len(name)} characters; at most {self.limits.max_name_chars} are allowed")
        return name

    def _check_batch(self, facts: Sequence[str], paraphrases: Sequence[Sequence[str]] | None) -> None:
        limits = self.limits
        if not facts:
            raise Invalid("facts is empty; send at least one sentence, e.g. {\"facts\": [\"Paris is in Italy.\"]}")
        if len(facts) > limits.max_batch:
            raise Invalid(f"{len(facts)} facts in one request; at most {limits.max_batch} are allowed, "
                          "split them into several writes")
        if paraphrases is not None and len(paraphrases) != len(facts):
            raise Invalid(f"paraphrases must have one list per fact ({len(facts)}); got {len(paraphrases)}")
        self._check_lengths("facts", facts, limits.max_fact_chars)
        for i, group in enumerate(paraphrases or []):
            if len(group) > limits.max_paraphrases:
                raise Invalid(f"paraphrases[{i}] has {len(group)} entries; at most {limits.max_paraphrases} are allowed")
            self._check_lengths(f"paraphrases[{i}]", group, limits.max_fact_chars)

    @staticmethod
    def _check_lengths(name: str, texts: Sequence[str], limit: int) -> None:
        for i, text in enumerate(texts):
            if len(text) > limit:
                raise Invalid(f"{name}[{i}] has {len(text)} characters; at most {limit} are allowed")

    def _check_prompt(self, prompt: str) -> None:
        if len(prompt) > self.limits.max_prompt_chars:
            raise Invalid(f"prompt has {len(prompt)} characters; at most {self.limits.max_prompt_chars} are allowed")

    def _check_candidates(self, candidates: Sequence[str]) -> None:
        if not candidates:
            raise Invalid("candidates is empty; send the continuations to score, e.g. [\"Paris\", \"Rome\"]")
        if len(candidates) > self.limits.max_candidates:
            raise Invalid(f"{len(candidates)} candidates; at most {self.limits.max_candidates} are allowed")
        self._check_lengths("candidates", candidates, self.limits.max_prompt_chars)

