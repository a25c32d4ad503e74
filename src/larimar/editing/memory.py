"""A user-facing episodic memory: write facts, forget them by id, save and reload.

Shapes: N written items (facts and their paraphrases), Q queries, E episodes, K slots,
C code size, H encoder hidden size.

The facts live in a sequence of episodes, each one Larimar memory (K x C) holding at most
`episode_items` items (K / 2 by default), so every episode stays within the capacity where the
least-squares write recalls each of its items exactly (relative error ~1e-14 at K / 2 items,
measured in docs/results.md; past K items the recall of one memory collapses). A write fills
the newest episode, opening a fresh one when it is full, so its cost does not grow with the
number of facts. Every write is a sequential recursive-least-squares update
(`EpisodicMemory.update`) of one episode with reference-memory keys; the latents and keys of
each item are kept, so `forget` applies the same update with alpha = -1 to that episode, which
then equals the episode that never saw the fact. All memory math runs in float64.

A query is routed to an item by the scope detector over `search_rows` and `recall` reads that
item's episode with the item's own write key (a hetero-associative read,
`EpisodicMemory.read(keys=...)`).

A forgotten fact's rows stay in the row storage, marked not live, until the forgotten rows
outnumber a quarter of the live ones; then the live rows are copied once. So a forget costs
its episode's update, not a copy of every row (amortised), and `items` shows only live rows.

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
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from ..memory import MemoryState
from ..model.larimar import LarimarModel
from .encoding import MEMORY_DTYPE, TooLong, encode_texts
from .items import Fact, Items
from .persistence import read_memory, save_memory

logger = logging.getLogger(__name__)


class Memory:
    """Facts written into the episodic memories of a Larimar model.

    Create one with `Larimar.new_memory()` or `Larimar.load_memory(path)`.

    Args:
        model: the model whose encoder, keys and prior the memory uses.
        state: the episodes' memories, (E, K, C) with their key statistics; None: empty.
        items: the written items, `Items.episodes` indexing into the E episodes.
        facts: the fact log, in writing order.
        episode_items: items per episode; None: K // 2.
    """

    def __init__(self, model: LarimarModel, state: MemoryState | None = None,
                 items: Items | None = None, facts: Sequence[Fact] = (), episode_items: int | None = None) -> None:
        self._model = model
        slots = model.memory.config.slots
        self.episode_items = slots // 2 if episode_items is None else int(episode_items)
        if not 1 <= self.episode_items <= slots:
            raise ValueError(f"episode_items must be in [1, {slots}] (the memory's slots); got {episode_items}")
        state = state if state is not None else self._empty_state()
        self._episodes = [_sequential(state)] if state.batch_size == 1 else [  # one episode kept as is (not folded)
            MemoryState(*(t[e : e + 1] for t in _tensors(state))) for e in range(state.batch_size)]
        self._items = items if items is not None else self._no_items()
        self._live: Tensor | None = None  # (N,) bool over `_items`' rows; None: every row is live
        self._newest_live: int | None = None  # live rows of the newest episode, once counted
        self._facts: dict[str, Fact] = {f.id: f for f in facts}
        if self._items.owners and int(self._items.episodes.max()) >= len(self._episodes):
            raise ValueError("items refer to an episode the state does not hold; the memory file is damaged")

    # ----------------------------------------------------------------------------- views
    def __len__(self) -> int:
        """Number of facts (paraphrases not counted)."""
        return len(self._facts)

    def __repr__(self) -> str:
        return f"Memory({len(self)} facts, {self.item_count()} items, {len(self._episodes)} episodes)"

    def facts(self) -> list[Fact]:
        """The facts in the order they were written."""
        return list(self._facts.values())

    @property
    def state(self) -> MemoryState:
        """All episodes' memories: M (E, K, C) with their key statistics, float64."""
        if len(self._episodes) == 1:
            return self._episodes[0]
        return MemoryState(*(torch.cat(parts) for parts in zip(*(_tensors(e) for e in self._episodes))))

    @property
    def episodes(self) -> int:
        """Number of episodes E."""
        return len(self._episodes)

    @property
    def items(self) -> Items:
        """The written items (read-only view; do not modify). Row numbers here are those that
        `recall`, `item_text` and `search_rows` use: reading it drops the forgotten rows kept so
        far, which renumbers the rows, so code sharing a memory between threads (the service)
        reads `item_count` and `save`s instead, which change nothing."""
        if self._live is not None:
            self._items, self._live = self._live_items(), None
        return self._items

    def _live_items(self) -> Items:
        """The live rows, as new storage when some are forgotten; this memory is not changed."""
        items, live = self._items, self._live
        return items if live is None else items.select(live)

    def item_count(self) -> int:
        """Number of live item rows (each fact and its paraphrases)."""
        live = self._live
        return len(self._items.owners) if live is None else int(live.sum())

    def search_rows(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """The scope keys (N, S, H) of the stored rows, their coarse copy (`Items.coarse`), and
        (N,) whether each row is live (None: all are); forgotten rows may still be stored (see
        the module docstring)."""
        return self._items.embeddings, self._items.coarse, self._live  # type: ignore[return-value]

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
                whole, or a fact has more paraphrases than an episode holds; nothing is written.
        """
        facts = self._check_texts(facts, "facts")
        groups = self._check_paraphrases(paraphrases, len(facts))
        ids = self._new_ids(len(facts))
        self._append(facts, groups, ids, datetime.now(timezone.utc), strict=True)
        return ids

    def _append(self, facts: Sequence[str], groups: Sequence[Sequence[str]], ids: Sequence[str],
                created: datetime | Sequence[datetime], strict: bool = False) -> None:
        """Encode and write checked facts under the given ids (all or nothing). With `strict`, a
        text longer than the encoder reads is refused (ValueError naming it) instead of cut."""
        texts = [t for fact, group in zip(facts, groups) for t in (fact, *group)]
        owners = [i for i, group in zip(ids, groups) for _ in range(1 + len(group))]
        stamps = [created] * len(ids) if isinstance(created, datetime) else list(created)
        self._check_groups([1 + len(g) for g in groups])
        try:  # (N, C), (N, 2, H); the lengths are checked on the encoding's own tokens
            latents, embeddings = encode_texts(self._model.encoder, texts, scope_keys=True, strict=strict)
        except TooLong as err:
            names = [f"facts[{i}]" if j < 0 else f"paraphrases[{i}][{j}]"
                     for i, group in enumerate(groups) for j in range(-1, len(group))]
            raise ValueError(f"{names[err.index]} has {err.tokens} encoder tokens but the encoder reads at most "
                             f"{err.limit}; split it into shorter facts") from None
        keys = self._model.memory.address(latents[None])[0]  # (N, K)
        self.write_encoded(Items(latents, keys, embeddings, owners),
                           [Fact(i, f, t, tuple(g)) for i, f, g, t in zip(ids, facts, groups, stamps)])
        logger.debug("wrote %d facts (%d items)", len(ids), len(texts))

    @torch.no_grad()
    def write_encoded(self, items: Items, facts: Sequence[Fact]) -> None:
        """Write already-encoded items (each fact's rows together, in the order of `facts`), as
        `write` does after encoding: the same episodes, the same updates. Replaying a logged
        write with it gives the memory the write gave."""
        sizes = [items.owners.count(f.id) for f in facts]
        if any(n == 0 for n in sizes) or items.owners != [f.id for f, n in zip(facts, sizes) for _ in range(n)]:
            raise ValueError("items.owners must hold the rows of exactly the given facts, each fact's rows together "
                             "and in the order of the facts")
        self._check_groups(sizes)
        episodes, (places, newest_live) = list(self._episodes), self._places(sizes)
        rows = torch.tensor([e for e, n in zip(places, sizes) for _ in range(n)], dtype=torch.int64)
        targets = sorted(set(places))
        for e in targets:
            if e == len(episodes):
                episodes.append(self._empty_state())
            pick = rows == e if len(targets) > 1 else slice(None)  # usually every row goes to one episode
            episodes[e] = self._model.memory.update(
                episodes[e], items.latents[pick][None], alpha=1.0, keys=items.keys[pick][None])
        new = Items(items.latents, items.keys, items.embeddings, list(items.owners), rows.to(items.latents.device),
                    items.coarse)
        if self._live is not None:
            self._live = torch.cat([self._live, self._live.new_ones(len(new.owners))])
        self._episodes, self._items = episodes, self._items.extend(new)
        self._newest_live = newest_live
        self._facts.update((f.id, f) for f in facts)

    def copy(self) -> Memory:
        """A memory equal to this one that changes independently (tensors are never mutated)."""
        twin = Memory(self._model, self._episodes[0], self._items if len(self._episodes) == 1 else None,
                      episode_items=self.episode_items)
        twin._episodes, twin._items, twin._facts = list(self._episodes), self._items, dict(self._facts)
        twin._live, twin._newest_live = self._live, self._newest_live
        return twin

    def _check_groups(self, sizes: Sequence[int]) -> None:
        too_big = [i for i, n in enumerate(sizes) if n > self.episode_items]
        if too_big:
            raise ValueError(f"facts[{too_big[0]}] has {sizes[too_big[0]] - 1} paraphrases; an episode holds "
                             f"{self.episode_items} items, so pass at most {self.episode_items - 1}")

    def _places(self, sizes: Sequence[int]) -> tuple[list[int], int]:
        """The episode of each new group of `sizes` items (the newest episode while it has room),
        and the live rows the newest episode will then hold."""
        episode, used = len(self._episodes) - 1, self._newest_live
        if used is None:  # counted after loading or forgetting; a write keeps the count
            newest = self._items.episodes == episode  # (N,): only the newest episode's live rows are counted
            used = int((newest if self._live is None else newest & self._live).sum())
        out = []
        for size in sizes:
            if used + size > self.episode_items:
                episode, used = episode + 1, 0
            out.append(episode)
            used += size
        return out, used

    @torch.no_grad()
    def forget(self, fact_id: str) -> None:
        """Remove a fact and its paraphrases exactly (RLS with alpha = -1 on their stored keys,
        in their episode).

        Raises:
            KeyError: no fact has this id; the memory is unchanged.
        """
        if fact_id not in self._facts:
            known = ", ".join(list(self._facts)[:5]) or "none"
            raise KeyError(f"no fact with id {fact_id!r} in this memory (known ids: {known}); see memory.facts()")
        items = self._items
        live = self._live if self._live is not None else torch.ones(
            len(items.owners), dtype=torch.bool, device=items.keys.device)
        rows = [i for i in _positions(items.owners, fact_id) if bool(live[i])]
        gone = items.take(rows)
        live = live.index_fill(0, torch.tensor(rows, dtype=torch.int64, device=live.device), False)
        episodes = list(self._episodes)
        for e in gone.episodes.unique().tolist():
            pick = gone.episodes == e
            if not bool(((items.episodes == e) & live).any()):
                episodes[e] = self._empty_state()  # nothing left: exactly the empty episode
            else:
                episodes[e] = self._model.memory.update(
                    episodes[e], gone.latents[pick][None], alpha=-1.0, keys=gone.keys[pick][None])
        newest = self._newest_live
        if newest is not None:  # the fact's rows leave the newest episode's count
            newest -= int((gone.episodes == len(episodes) - 1).sum())
        self._episodes, self._live, self._newest_live = episodes, live, newest
        alive = int(live.sum())
        if len(live) - alive > max(64, alive // 4):  # copy the live rows once enough are forgotten
            self._items, self._live = items.select(live), None
        del self._facts[fact_id]

    # ----------------------------------------------------------------------------- reading
    @torch.no_grad()
    def recall(self, rows: Sequence[int]) -> Tensor:
        """Readouts (Q, C) float64 of written items: each row's episode read with the row's
        write key, Zr = w M (equal to the item's latent while its episode is within capacity)."""
        rows = list(rows)
        if not rows:
            raise ValueError("no rows to recall")
        n = len(self._items.owners)
        if any(not 0 <= r < n for r in rows):
            raise IndexError(f"item rows must be in [0, {n}); got {rows}")
        out = []
        for r in rows:
            state = self._episodes[int(self._items.episodes[r])]
            z, w = self._items.latents[r : r + 1][None], self._items.keys[r : r + 1][None]
            out.append(self._model.memory.read(state, z, keys=w)[0])  # (1, C)
        return torch.cat(out)

    def owner(self, row: int) -> str:
        """The id of the fact a stored row belongs to."""
        return self._items.owners[row]

    def item_text(self, row: int) -> str:
        """The text written in an item row: its fact, or one of the fact's paraphrases."""
        owners, live = self._items.owners, self._live
        owner, first = owners[row], row
        while first > 0 and owners[first - 1] == owner and (live is None or bool(live[first - 1])):
            first -= 1  # a fact's rows are together: no search of all rows
        fact = self._facts[owner]
        return (fact.text, *fact.paraphrases)[row - first]

    # ----------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the memory and its fact log to one safetensors file, atomically."""
        save_memory(Path(path), self._model, self.state, self._live_items(), self.facts(), self.episode_items)

    @classmethod
    def load(cls, model: LarimarModel, path: str | Path) -> Memory:
        """A memory saved with `save` (files of an older format or another model are migrated:
        their facts are written again from their texts, keeping ids, dates and paraphrases).

        Raises:
            FileNotFoundError: no file at `path`.
            ValueError: not a larimar memory file, or written by a newer larimar.
        """
        state, items, facts, episode_items = read_memory(model, Path(path))
        if state is None or items is None:
            memory = cls(model)
            memory.write_facts(facts)
            return memory
        return cls(model, state, items, facts, episode_items)

    def write_facts(self, facts: Sequence[Fact]) -> None:
        """Encode and write facts as they are (ids, dates, paraphrases kept), e.g. from another
        memory's fact log: how files of another model migrate. Ids already here are refused."""
        taken = [f.id for f in facts if f.id in self._facts]
        if taken or len({f.id for f in facts}) < len(facts):
            raise ValueError(f"fact ids must be new and distinct; already used: {sorted(set(taken))[:5]}")
        if facts:
            self._append([f.text for f in facts], [list(f.paraphrases) for f in facts], [f.id for f in facts],
                         [f.created for f in facts])

    # ----------------------------------------------------------------------------- internals
    def _empty_state(self) -> MemoryState:
        device = self._model.encoder.head.weight.device
        return self._model.memory.empty(1, device=device, dtype=MEMORY_DTYPE)

    def _no_items(self) -> Items:
        state, hidden = self._episodes[0], self._model.encoder.hidden_size
        like = {"dtype": state.dtype, "device": state.device}
        return Items(torch.zeros(0, state.code_size, **like), torch.zeros(0, state.slots, **like),
                     torch.zeros(0, 2, hidden, **like), [])

    def _new_ids(self, n: int) -> list[str]:
        ids: list[str] = []
        while len(ids) < n:
            candidate = uuid.uuid4().hex[:12]
            if candidate not in self._facts and candidate not in ids:
                ids.append(candidate)
        return ids

    def _check_texts(self, texts: Sequence[str], name: str) -> list[str]:
        """Each text a non-empty string; else ValueError (the length is checked as it is encoded)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"{name} must be a list of strings; wrap a single fact in a list: write([fact])")
        if name == "facts" and not texts:
            raise ValueError("no facts given; pass a list of sentences, e.g. ['The Eiffel Tower is in Rome.']")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{name}[{i}] is {type(text).__name__}, not a string; pass sentences as str")
            if not text.strip():
                raise ValueError(f"{name}[{i}] is empty; pass a non-empty sentence")
        return list(texts)

    def _check_paraphrases(self, paraphrases: Sequence[Sequence[str]] | None, n: int) -> list[list[str]]:
        if paraphrases is None:
            return [[] for _ in range(n)]
        if isinstance(paraphrases, str) or len(paraphrases) != n:
            raise ValueError(f"paraphrases must be one list of strings per fact ({n}); got {paraphrases!r:.80}")
        return [self._check_texts(group, f"paraphrases[{i}]") for i, group in enumerate(paraphrases)]


def _positions(owners: list[str], fact_id: str) -> list[int]:
    """Every row of `owners` holding `fact_id` (a fact's rows are together; a forgotten fact's
    rows may stay until the live rows are copied, and an id may be written again after that)."""
    out, row = [], -1
    while True:
        try:
            row = owners.index(fact_id, row + 1)  # a scan in C, not a Python loop over every row
        except ValueError:
            return out
        out.append(row)


def _sequential(state: MemoryState) -> MemoryState:
    """`state`, when it is sequential (has gram_pinv and free); else ValueError."""
    if not state.sequential:
        raise ValueError("a memory's episodes are sequential states (with gram_pinv and free)")
    return state


def _tensors(state: MemoryState) -> tuple[Tensor, Tensor, Tensor]:
    """A sequential state's (memory, gram_pinv, free)."""
    state = _sequential(state)
    return state.memory, state.gram_pinv, state.free  # type: ignore[return-value]
