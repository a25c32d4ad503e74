"""The memory service behind the HTTP routes: a thin layer over `Larimar` and `Memory`.

One `Larimar` model per process. Memories live in the `Store` as a snapshot plus a log of the
changes after it (see `storage` and `replay`) and, once used, in a cache that knows the log entry
it ends at. A change works on a copy of the cached memory, appends its log entry (the exact update:
encoded items, or the fact forgotten) and its audit rows in one transaction, and only then replaces
the cached memory: readers always see a consistent, committed memory and never wait for writers.
Changes to one memory are serialised by its lock here and by the database across processes. Before
each use the cache is checked against the memory's head in the database, so a replica sharing the
database replays what others wrote. Once a memory has `snapshot_every` log entries after its
snapshot, or its oldest is `snapshot_seconds` old, a background thread stores a new snapshot and
drops the log before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from ..editing import Answer, Fact, Larimar, Memory
from . import auth
from .config import Limits, control_characters
from .errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from .replay import apply_write, copy, encode_write, memory_bytes, memory_from_bytes, replay, foreign_snapshot
from .batching import AskRequest, ask_engine, larimar_ask_many
from .storage import FactRow, MemoryRow, Store
from .threads import one_core

logger = logging.getLogger(__name__)

__all__ = ["Created", "MemoryService", "Scored", "memory_bytes", "memory_from_bytes"]

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


@dataclass(frozen=True)
class Cached:
    """A committed memory and the log entry it ends at."""

    memory: Memory
    seq: int
    tail: tuple[int, ...]
    """Log entries replayed since its snapshot."""
    since: float | None = None
    """Clock time at which the oldest entry of `tail` was cached (None while `tail` is empty)."""


AskMany = Callable[[Sequence[AskRequest]], list[Answer]]


def _row(fact: Fact) -> FactRow:
    return FactRow(fact.id, fact.text, fact.created, None, fact.paraphrases)


def _now() -> datetime:
    return datetime.now(UTC)


class MemoryService:
    """Memories of one model, persisted in one store, guarded by per-memory API keys.

    Args:
        snapshot_every: store a new snapshot (and drop the log before it) once a memory has this
            many log entries after its snapshot; loading replays at most about this many.
        snapshot_seconds: also once its oldest log entry after the snapshot was cached this many
            seconds ago (checked after each change and by a background timer; 0: only by count).
        clock: monotonic seconds (tests pass a fake one and call `snapshot_due`).
        ask_batch, ask_wait_ms: most asks decoded together (1: alone); how long the first waits for others.
        ask_many: answers a batch of asks (given: a `Batcher` runs it; default: `batching.AskLoop`).
    """

    def __init__(self, lm: Larimar, store: Store, limits: Limits, admin_key: str | None = None,
                 snapshot_every: int = 100, ask_batch: int = 8, ask_wait_ms: float = 10.0,
                 ask_many: AskMany | None = None, snapshot_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be a positive number of log entries; got {snapshot_every}")
        if not snapshot_seconds >= 0:
            raise ValueError(f"snapshot_seconds must be >= 0 (0: snapshots by count only); got {snapshot_seconds}")
        self.lm, self.store, self.limits, self.admin_key = lm, store, limits, admin_key
        self.snapshot_every, self.snapshot_seconds, self._clock = snapshot_every, snapshot_seconds, clock
        self._memories: dict[str, Cached] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()
        self._verified = auth.VerifiedKeys()
        self._snapshots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="larimar-snapshot", initializer=one_core)
        self._snapshotting: set[str] = set()
        self._snapshotted: dict[str, int] = {}  # the last log entry this process stored a snapshot at
        self._closing = threading.Event()
        if snapshot_seconds > 0:
            threading.Thread(target=self._snapshot_timer, name="larimar-snapshot-timer", daemon=True).start()
        self.ask_many = ask_many or larimar_ask_many(lm)
        self._asks = ask_engine(lm, ask_many, ask_batch, ask_wait_ms / 1000)

    def observe_batches(self, observer: Callable[[int], None]) -> None:
        """Call `observer` with the size of each batch of asks decoded together (metrics)."""
        if self._asks is not None:
            self._asks.on_batch = observer

    def close(self) -> None:
        """Finish pending snapshots, stop the ask batcher and close the database connections."""
        self._closing.set()
        self._snapshots.shutdown(wait=True)
        if self._asks is not None:
            self._asks.close()
        self.store.close()

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
        one_core()  # like every request thread that runs torch (`threads`)
        return self._create(name, self.lm.new_memory())

    def import_memory(self, name: str, data: bytes) -> Created:
        """A new memory from a file written by `Memory.save` or exported by this service."""
        one_core()
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
        self._cache(memory_id, Cached(memory, 0, ()))
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
        """Delete a memory: its state, log and key go; its facts stay in the audit log, forgotten now."""
        with self._lock(memory_id):
            self._current(memory_id)
            self.store.delete_memory(memory_id, _now())
            self._cache(memory_id, None)
            self._verified.drop_memory(memory_id)
        logger.info("deleted memory %s", memory_id)

    def export(self, memory_id: str) -> bytes:
        """The memory file (safetensors, as `Memory.save` writes it)."""
        return memory_bytes(self._current(memory_id).memory)

    # ----------------------------------------------------------------------------- facts
    def write(self, memory_id: str, facts: Sequence[str], paraphrases: Sequence[Sequence[str]] | None) -> list[FactRow]:
        """Write a batch of facts; returns their log entries (with ids) once they are durable."""
        self._check_batch(facts, paraphrases)
        with self._lock(memory_id):
            cached = self._current(memory_id)
            memory = copy(cached.memory)
            try:
                ids = memory.write(list(facts), None if paraphrases is None else [list(p) for p in paraphrases])
            except ValueError as err:
                raise Invalid(str(err)) from err
            entry = encode_write(cached.memory, memory, ids)
            written = {f.id: f for f in memory.facts()}
            rows = [_row(written[i]) for i in ids]
            try:
                with self.store.change(memory_id) as change:
                    if change.head != cached.seq:  # another server changed it: write on top of its changes
                        cached = self._rebuild(memory_id, cached, change.load(cached.seq))
                        memory = apply_write(cached.memory, entry)
                    seq = change.write(entry, rows)
            except LookupError as err:
                self._cache(memory_id, None)
                raise NotFound(f"no memory {memory_id}") from err
            self._cache(memory_id, self._appended(cached, memory, seq))
        self._maybe_snapshot(memory_id)
        logger.debug("memory %s: wrote %d facts", memory_id, len(rows))
        return rows

    def forget(self, memory_id: str, fact_id: str) -> FactRow:
        """Forget a fact; its log entry stays, with the time it was forgotten."""
        with self._lock(memory_id):
            cached = self._current(memory_id)
            logged = self.store.fact(memory_id, fact_id)
            if logged is None:
                raise NotFound(f"no fact {fact_id} in memory {memory_id}")
            if logged.forgotten is not None:
                raise Conflict(f"fact {fact_id} was already forgotten at {logged.forgotten.isoformat()}")
            when = _now()
            try:
                with self.store.change(memory_id) as change:
                    if change.head != cached.seq:
                        cached = self._rebuild(memory_id, cached, change.load(cached.seq))
                    memory = copy(cached.memory)
                    try:
                        memory.forget(fact_id)
                    except KeyError as err:  # another server forgot it in the meantime
                        raise Conflict(f"fact {fact_id} was already forgotten") from err
                    seq = change.forget(fact_id, when)
            except LookupError as err:
                self._cache(memory_id, None)
                raise NotFound(f"no memory {memory_id}") from err
            self._cache(memory_id, self._appended(cached, memory, seq))
        self._maybe_snapshot(memory_id)
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
        """Generate an answer, conditioned on the memory when the prompt is in scope.

        Concurrent asks (of any memories) are decoded together in batches (see `batching`).
        """
        self._check_prompt(prompt)
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_NEW_TOKENS, self.limits.max_new_tokens)
        if not 1 <= max_new_tokens <= self.limits.max_new_tokens:
            raise Invalid(f"max_new_tokens must be in [1, {self.limits.max_new_tokens}]; got {max_new_tokens}")
        request = AskRequest(prompt, self._current(memory_id).memory, max_new_tokens, scope_threshold)
        try:
            if self._asks is None:
                [answer] = self.ask_many([request])
                return answer
            return self._asks.submit(request)
        except ValueError as err:
            raise Invalid(str(err)) from err

    def score(self, memory_id: str, prompt: str, candidates: Sequence[str], scope_threshold: float | None) -> Scored:
        """Mean token NLL of each candidate continuation (lower is likelier)."""
        self._check_prompt(prompt)
        self._check_candidates(candidates)
        memory = self._current(memory_id).memory
        try:
            decision = self.lm.scope(prompt, memory, scope_threshold)
            scores = self.lm.score(prompt, list(candidates), memory, scope_threshold)
        except ValueError as err:
            raise Invalid(str(err)) from err
        return Scored(scores, decision.in_scope, decision.fact_id, decision.similarity)

    # ----------------------------------------------------------------------------- state
    def flush(self) -> None:
        """Wait until the snapshots scheduled so far are stored."""
        self._snapshots.submit(lambda: None).result()

    def _lock(self, memory_id: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(memory_id, threading.RLock())

    def _memory(self, memory_id: str) -> Memory:
        """The committed memory, up to date with the database."""
        return self._current(memory_id).memory

    def _current(self, memory_id: str) -> Cached:
        """The cached memory, first brought up to the memory's head in the database (NotFound if gone)."""
        one_core()  # every read and change of a memory comes here first (see `threads`)
        head = self.store.head(memory_id)
        if head is None:
            self._cache(memory_id, None)
            raise NotFound(f"no memory {memory_id}")
        cached = self._memories.get(memory_id)
        if cached is not None and cached.seq >= head:
            return cached
        with self._lock(memory_id):  # a load never interleaves with a change or a delete
            cached = self._memories.get(memory_id)
            if cached is not None and cached.seq >= head:
                return cached
            loaded = self.store.load(memory_id, None if cached is None else cached.seq)
            if loaded is None:
                self._cache(memory_id, None)
                raise NotFound(f"no memory {memory_id}")
            fresh = self._rebuild(memory_id, cached, loaded)
            self._cache(memory_id, fresh)
        self._maybe_snapshot(memory_id)
        return fresh

    def _rebuild(self, memory_id: str, cached: Cached | None, loaded: object) -> Cached:
        """The memory at `loaded.head_seq`: its snapshot (or `cached`) with the log entries replayed."""
        from .storage import Loaded

        assert isinstance(loaded, Loaded)
        if loaded.snapshot is not None:
            try:
                base = Cached(memory_from_bytes(self.lm, loaded.snapshot), loaded.snapshot_seq, ())
            except ValueError as err:
                raise Conflict(f"memory {memory_id} cannot be used with this model: {err}") from err
        else:
            assert cached is not None
            base = cached
        try:
            memory = replay(base.memory, loaded.entries, foreign_snapshot(self.lm, loaded.snapshot))
        except (KeyError, ValueError) as err:
            raise Conflict(f"memory {memory_id}: its log cannot be replayed ({err}); nothing was changed, "
                           "export it with the server version that wrote it") from err
        seq = loaded.entries[-1].seq if loaded.entries else max(base.seq, loaded.snapshot_seq)
        if loaded.entries:
            logger.debug("memory %s: replayed %d log entries up to %d", memory_id, len(loaded.entries), seq)
        tail = (*base.tail, *(e.seq for e in loaded.entries))
        return Cached(memory, seq, tail, base.since if base.tail else self._clock() if tail else None)

    def _appended(self, cached: Cached, memory: Memory, seq: int) -> Cached:
        """`memory` after log entry `seq`, which followed `cached`."""
        return Cached(memory, seq, (*cached.tail, seq), cached.since if cached.tail else self._clock())

    def _cache(self, memory_id: str, cached: Cached | None) -> None:
        """Keep `cached` (None: drop the memory). Log entries that a snapshot stored meanwhile
        leave its tail: a change computed from an older `Cached` would otherwise bring them back."""
        with self._guard:
            if cached is None:
                self._memories.pop(memory_id, None)
                self._snapshotted.pop(memory_id, None)
                return
            stored = self._snapshotted.get(memory_id, 0)
            if cached.tail and cached.tail[0] <= stored:
                tail = tuple(s for s in cached.tail if s > stored)
                cached = Cached(cached.memory, cached.seq, tail, self._clock() if tail else None)
            self._memories[memory_id] = cached

    def snapshot_due(self) -> None:
        """Schedule the snapshots now due by count or by age (the timer calls this every second or so)."""
        for memory_id in list(self._memories):
            self._maybe_snapshot(memory_id)

    def _snapshot_timer(self) -> None:
        while not self._closing.wait(min(1.0, self.snapshot_seconds)):
            try:
                self.snapshot_due()
            except Exception:  # noqa: BLE001  (the timer must survive; the log keeps every change)
                logger.exception("scheduling snapshots failed")

    def _maybe_snapshot(self, memory_id: str) -> None:
        """Schedule a snapshot once the memory has `snapshot_every` log entries after its last one,
        or its oldest such entry is `snapshot_seconds` old."""
        cached = self._memories.get(memory_id)
        if cached is None or not cached.tail:
            return
        aged = self.snapshot_seconds > 0 and cached.since is not None and \
            self._clock() - cached.since >= self.snapshot_seconds
        if len(cached.tail) < self.snapshot_every and not aged:
            return
        with self._guard:
            if memory_id in self._snapshotting:
                return
            self._snapshotting.add(memory_id)
        try:
            self._snapshots.submit(self._snapshot, memory_id)
        except RuntimeError:  # shutting down: the log keeps everything, the next start replays it
            with self._guard:
                self._snapshotting.discard(memory_id)

    def _snapshot(self, memory_id: str) -> None:
        try:
            cached = self._memories.get(memory_id)
            if cached is None or not cached.tail:
                return
            if self.store.save_snapshot(memory_id, cached.seq, memory_bytes(cached.memory)):
                logger.info("memory %s: snapshot after log entry %d (%d entries folded in)",
                            memory_id, cached.seq, len(cached.tail))
            with self._guard:
                self._snapshotted[memory_id] = max(cached.seq, self._snapshotted.get(memory_id, 0))
                now = self._memories.get(memory_id)
                if now is not None:
                    tail = tuple(s for s in now.tail if s > cached.seq)
                    self._memories[memory_id] = Cached(now.memory, now.seq, tail, self._clock() if tail else None)
        except Exception:  # a failed snapshot loses nothing: the log still holds every change
            logger.exception("memory %s: snapshot failed; the log keeps every change, it will be retried", memory_id)
        finally:
            with self._guard:
                self._snapshotting.discard(memory_id)

    # ----------------------------------------------------------------------------- checks
    def _check_name(self, name: str) -> str:
        self._check_controls("name", name)
        name = name.strip()
        if len(name) > self.limits.max_name_chars:
            raise Invalid(f"name has {len(name)} characters; at most {self.limits.max_name_chars} are allowed")
        return name

    def _check_batch(self, facts: Sequence[str], paraphrases: Sequence[Sequence[str]] | None) -> None:
        limits = self.limits
        if not facts:
            raise Invalid("facts is empty; send at least one sentence, e.g. {\"facts\": [\"Paris is in Italy.\"]}")
        if len(facts) > limits.max_batch:
            raise Invalid(f"{len(facts)} facts in one request; at most {limits.max_batch} are allowed: split the write")
        if paraphrases is not None and len(paraphrases) != len(facts):
            raise Invalid(f"paraphrases must have one list per fact ({len(facts)}); got {len(paraphrases)}")
        self._check_texts("facts", facts, limits.max_fact_chars)
        for i, group in enumerate(paraphrases or []):
            if len(group) > limits.max_paraphrases:
                raise Invalid(f"paraphrases[{i}] has {len(group)} entries; at most {limits.max_paraphrases} are allowed")
            self._check_texts(f"paraphrases[{i}]", group, limits.max_fact_chars)

    @classmethod
    def _check_texts(cls, name: str, texts: Sequence[str], limit: int, empty_ok: bool = False) -> None:
        for i, text in enumerate(texts):
            if len(text) > limit:
                raise Invalid(f"{name}[{i}] has {len(text)} characters; at most {limit} are allowed")
            cls._check_controls(f"{name}[{i}]", text)
            if not empty_ok and not text.strip():
                raise Invalid(f"{name}[{i}] is empty; send a non-empty sentence")

    @staticmethod
    def _check_controls(name: str, text: str) -> None:
        if found := control_characters(text):
            raise Invalid(f"{name} holds control characters ({', '.join(found)}); only tab and newline are "
                          "allowed: remove them (a NUL byte often means a binary file was pasted)")

    def _check_prompt(self, prompt: str) -> None:
        if len(prompt) > self.limits.max_prompt_chars:
            raise Invalid(f"prompt has {len(prompt)} characters; at most {self.limits.max_prompt_chars} are allowed")
        self._check_controls("prompt", prompt)
        if not prompt.strip():
            raise Invalid("prompt is empty; send a question or the start of a sentence")

    def _check_candidates(self, candidates: Sequence[str]) -> None:
        if not candidates:
            raise Invalid("candidates is empty; send the continuations to score, e.g. [\"Paris\", \"Rome\"]")
        if len(candidates) > self.limits.max_candidates:
            raise Invalid(f"{len(candidates)} candidates; at most {self.limits.max_candidates} are allowed")
        self._check_texts("candidates", candidates, self.limits.max_prompt_chars, empty_ok=True)
