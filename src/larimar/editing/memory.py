"""A user-facing episodic memory: write facts, forget them by id, save and reload.

Shapes: N written items (facts and their paraphrases), Q queries, K slots, C code size,
H encoder hidden size.

Every write is a sequential recursive-least-squares update (`EpisodicMemory.update`) with
reference-memory keys; the latents and keys of each item are kept, so `forget` applies the
same update with alpha = -1 and the memory equals the one that never saw the fact. All memory
math runs in float64.

Example:
    >>> memory = larimar.new_memory()
    >>> [fact_id] = memory.write(["The Eiffel Tower is located in Rome."])
    >>> memory.forget(fact_id)
    >>> len(memory)
    0
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from ..memory import MemoryState, memory_keys, pinv
from ..model.larimar import LarimarModel
from .encoding import MEMORY_DTYPE, encode_texts, encoder_tokens, scope_similarities

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fact:
    """One written fact."""

    id: str
    """Short unique id, used by `Memory.forget`."""
    text: str
    """The fact as written."""
    created: datetime
    """When it was written (UTC)."""
    paraphrases: tuple[str, ...] = ()
    """Paraphrases written along with it (same id; forgotten with it)."""


@dataclass
class Items:
    """The written items (each fact, then its paraphrases), row-aligned."""

    latents: Tensor
    """(N, C) float64 values written into the memory."""
    keys: Tensor
    """(N, K) float64 write keys (needed to forget exactly)."""
    embeddings: Tensor
    """(N, S, H) float64 unit embeddings for the scope detector: S keys per item (the whole
    text and its head; memories saved before heads existed load with S = 1)."""
    owners: list[str] = field(default_factory=list)
    """(N,) the fact id of each row."""

    def select(self, keep: Tensor) -> Items:
        """The rows where keep (N,) is True."""
        owners = [o for o, k in zip(self.owners, keep.tolist()) if k]
        return Items(self.latents[keep], self.keys[keep], self.embeddings[keep], owners)

    def extend(self, other: Items) -> Items:
        """These rows followed by `other`'s."""
        keys = max(self.embeddings.shape[1], other.embeddings.shape[1])
        return Items(
            torch.cat([self.latents, other.latents]), torch.cat([self.keys, other.keys]),
            torch.cat([_widen(self.embeddings, keys), _widen(other.embeddings, keys)]), self.owners + other.owners,
        )


def _widen(embeddings: Tensor, keys: int) -> Tensor:
    """(N, S, H) -> (N, keys, H), repeating the last key (an old item's whole-text key stands
    in for the head key it never had)."""
    extra = keys - embeddings.shape[1]
    return embeddings if extra <= 0 else torch.cat([embeddings, embeddings[:, -1:].expand(-1, extra, -1)], 1)


class Memory:
    """Facts written into one episodic memory of a Larimar model.

    Create one with `Larimar.new_memory()` or `Larimar.load_memory(path)`.
    """

    def __init__(self, model: LarimarModel, state: MemoryState | None = None,
                 items: Items | None = None, facts: Sequence[Fact] = ()) -> None:
        self._model = model
        self._state = state if state is not None else self._empty_state()
        self._items = items if items is not None else self._no_items()
        self._facts: dict[str, Fact] = {f.id: f for f in facts}
        self._memory_pinv: Tensor | None = None

    # ----------------------------------------------------------------------------- views
    def __len__(self) -> int:
        """Number of facts (paraphrases not counted)."""
        return len(self._facts)

    def __repr__(self) -> str:
        return f"Memory({len(self)} facts, {len(self._items.owners)} items)"

    def facts(self) -> list[Fact]:
        """The facts in the order they were written."""
        return list(self._facts.values())

    @property
    def state(self) -> MemoryState:
        """The memory contents: M (1, K, C) with its key statistics, float64."""
        return self._state

    @property
    def items(self) -> Items:
        """The written items (read-only view; do not modify)."""
        return self._items

    @property
    def model(self) -> LarimarModel:
        """The model whose encoder and prior this memory uses."""
        return self._model

    # ----------------------------------------------------------------------------- edits
    @torch.no_grad()
    def write(self, facts: Sequence[str], paraphrases: Sequence[Sequence[str]] | None = None) -> list[str]:
        """Write facts (and optional paraphrases of each) as sequential RLS updates.

        Args:
            facts: sentences, e.g. ["The Eiffel Tower is located in Rome."].
            paraphrases: one list of paraphrases per fact (may be empty), or None.

        Returns:
            The new facts' ids, in order.

        Raises:
            ValueError: a fact or paraphrase is not a non-empty string the encoder can read
                whole; nothing is written.
        """
        facts = self._check_texts(facts, "facts")
        groups = self._check_paraphrases(paraphrases, len(facts))
        ids = self._new_ids(len(facts))
        texts = [t for fact, group in zip(facts, groups) for t in (fact, *group)]
        owners = [i for i, group in zip(ids, groups) for _ in range(1 + len(group))]
        latents, embeddings = encode_texts(self._model.encoder, texts, scope_keys=True)  # (N, C), (N, 2, H)
        keys = self._model.memory.address(latents[None])[0]  # (N, K)
        state = self._model.memory.update(self._state, latents[None], alpha=1.0, keys=keys[None])
        now = datetime.now(timezone.utc)
        self._commit(state, self._items.extend(Items(latents, keys, embeddings, owners)))
        for fact_id, text, group in zip(ids, facts, groups):
            self._facts[fact_id] = Fact(fact_id, text, now, tuple(group))
        logger.debug("wrote %d facts (%d items)", len(ids), len(texts))
        return ids

    @torch.no_grad()
    def forget(self, fact_id: str) -> None:
        """Remove a fact and its paraphrases exactly (RLS with alpha = -1 on their stored keys).

        Raises:
            KeyError: no fact has this id; the memory is unchanged.
        """
        if fact_id not in self._facts:
            known = ", ".join(list(self._facts)[:5]) or "none"
            raise KeyError(f"no fact with id {fact_id!r} in this memory (known ids: {known}); see memory.facts()")
        rows = torch.tensor([o == fact_id for o in self._items.owners], device=self._items.keys.device)
        remaining = self._items.select(~rows)
        if not remaining.owners:
            state = self._empty_state()  # nothing left: exactly the empty memory
        else:
            gone = self._items.select(rows)
            state = self._model.memory.update(self._state, gone.latents[None], alpha=-1.0, keys=gone.keys[None])
        self._commit(state, remaining)
        del self._facts[fact_id]

    # ----------------------------------------------------------------------------- reading
    @torch.no_grad()
    def read(self, z_query: Tensor) -> Tensor:
        """Auto-associative readout W M with W = Zq M^+: (Q, C) -> (Q, C) float64."""
        m = self._state.memory[0]  # (K, C)
        if self._memory_pinv is None:
            cfg = self._model.memory.config
            self._memory_pinv = pinv(m, cfg.pinv, cfg.pinv_steps, cfg.pinv_rtol)  # (C, K)
        return memory_keys(z_query.to(m), self._memory_pinv) @ m

    def nearest(self, embedding: Tensor) -> tuple[str, float] | None:
        """The fact whose text or paraphrase is most similar to a unit embedding (H,) or to
        any of several views of one query (V, H), and the cosine similarity; None when the
        memory is empty."""
        found = self.match(embedding)
        return None if found is None else found[:2]

    def match(self, embedding: Tensor) -> tuple[str, float, int] | None:
        """Like `nearest`, plus the index of the query view (row of a (V, H) input) that matched."""
        scores = self.similarities(embedding)
        if scores is None:
            return None
        flat = int(scores.argmax())
        view, item = divmod(flat, scores.shape[1])
        return self._items.owners[item], float(scores[view, item]), view

    def similarities(self, embedding: Tensor) -> Tensor | None:
        """(V, N) best cosine similarity of each query view (V, H) (or (H,)) to each item, over
        the item's scope keys; None when the memory is empty."""
        if not self._items.owners:
            return None
        keys = self._items.embeddings  # (N, S, H)
        return scope_similarities(keys, embedding.reshape(-1, keys.shape[-1]))

    # ----------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the memory and its fact log to one safetensors file, atomically."""
        from .persistence import save_memory

        save_memory(self, Path(path))

    # ----------------------------------------------------------------------------- internals
    def _commit(self, state: MemoryState, items: Items) -> None:
        self._state, self._items, self._memory_pinv = state, items, None

    def _empty_state(self) -> MemoryState:
        device = self._model.encoder.head.weight.device
        return self._model.memory.empty(1, device=device, dtype=MEMORY_DTYPE)

    def _no_items(self) -> Items:
        m = self._state.memory
        hidden = self._model.encoder.hidden_size
        return Items(m.new_zeros(0, m.shape[2]), m.new_zeros(0, m.shape[1]), m.new_zeros(0, 2, hidden), [])

    def _new_ids(self, n: int) -> list[str]:
        ids: list[str] = []
        while len(ids) < n:
            candidate = uuid.uuid4().hex[:12]
            if candidate not in self._facts and candidate not in ids:
                ids.append(candidate)
        return ids

    def _check_texts(self, texts: Sequence[str], name: str) -> list[str]:
        """Each text a non-empty string within the encoder's length; else ValueError."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"{name} must be a list of strings; wrap a single fact in a list: write([fact])")
        if name == "facts" and not texts:
            raise ValueError("no facts given; pass a list of sentences, e.g. ['The Eiffel Tower is in Rome.']")
        limit = self._model.encoder.max_length
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{name}[{i}] is {type(text).__name__}, not a string; pass sentences as str")
            if not text.strip():
                raise ValueError(f"{name}[{i}] is empty; pass a non-empty sentence")
            n = encoder_tokens(self._model.encoder, text)
            if n > limit:
                raise ValueError(
                    f"{name}[{i}] has {n} encoder tokens but the encoder reads at most {limit}; "
                    "split it into shorter facts"
                )
        return list(texts)

    def _check_paraphrases(self, paraphrases: Sequence[Sequence[str]] | None, n: int) -> list[list[str]]:
        if paraphrases is None:
            return [[] for _ in range(n)]
        if isinstance(paraphrases, str) or len(paraphrases) != n:
            raise ValueError(f"paraphrases must be one list of strings per fact ({n}); got {paraphrases!r:.80}")
        return [self._check_texts(group, f"paraphrases[{i}]") for i, group in enumerate(paraphrases)]
