"""The rows a memory keeps beside its episodes: written facts and their encoded items.

Shapes: N items, C code size, K slots, S scope keys per item, H encoder hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import torch
from torch import Tensor

COARSE_DTYPE = torch.float16
"""Precision of the scope keys' copy that the scope detector scans first (`Items.coarse`)."""


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


class _Rows:
    """Growable row storage behind `Items`: appending to the newest view writes into spare
    capacity (doubling when full), so a write costs the rows it adds, not the rows already there.
    Earlier views keep their length and contents."""

    def __init__(self, data: Tensor, filled: int | None = None) -> None:
        self.data, self.filled = data, data.shape[0] if filled is None else filled

    def append(self, length: int, rows: Tensor) -> tuple[_Rows, Tensor]:
        """The storage and the view of (its first `length` rows) + rows."""
        end = length + rows.shape[0]
        if length != self.filled or rows.shape[1:] != self.data.shape[1:]:  # not the newest view: copy
            fresh = _Rows(torch.cat([self.data[:length], rows]))
            return fresh, fresh.data
        if end > self.data.shape[0]:
            grown = self.data.new_empty(max(end, 2 * self.data.shape[0], 64), *self.data.shape[1:])
            grown[:length] = self.data[:length]
            self.data = grown
        self.data[length:end] = rows
        self.filled = end
        return self, self.data[:end]


@dataclass
class Items:
    """The written items (each fact, then its paraphrases), row-aligned."""

    latents: Tensor
    """(N, C) float64 values written into the memory."""
    keys: Tensor
    """(N, K) float64 write keys (needed to recall and to forget exactly)."""
    embeddings: Tensor
    """(N, S, H) float64 unit embeddings for the scope detector: S keys per item (the whole
    text and its head)."""
    owners: list[str] = field(default_factory=list)
    """(N,) the fact id of each row."""
    episodes: Tensor | None = None
    """(N,) int64 index of the episode holding each row; None: all in episode 0."""
    coarse: Tensor | None = field(default=None, repr=False, compare=False)
    """(N, S, H) `embeddings` in `COARSE_DTYPE`, derived when None (never saved): a scan of all
    items reads a quarter of the bytes, and `editing.scope` re-ranks its best rows exactly."""
    _storage: tuple[_Rows, ...] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.episodes is None:
            self.episodes = torch.zeros(self.latents.shape[0], dtype=torch.int64, device=self.latents.device)
        if self.coarse is None:
            self.coarse = self.embeddings.to(COARSE_DTYPE)

    def _columns(self) -> tuple[Tensor, ...]:
        return self.latents, self.keys, self.embeddings, self.episodes, self.coarse  # type: ignore[return-value]

    def select(self, keep: Tensor) -> Items:
        """The rows where keep (N,) is True (in storage with room to grow, so the next
        `extend` does not copy them again)."""
        owners = [o for o, k in zip(self.owners, keep.tolist()) if k]
        rows = keep.nonzero().flatten()
        room = len(owners) + max(64, len(owners) // 4)
        storage = []
        for column in self._columns():
            data = column.new_empty(room, *column.shape[1:])
            torch.index_select(column, 0, rows, out=data[: len(owners)])
            storage.append(_Rows(data, len(owners)))
        latents, keys, embeddings, episodes, coarse = (s.data[: len(owners)] for s in storage)
        return Items(latents, keys, embeddings, owners, episodes, coarse, tuple(storage))

    def take(self, rows: Sequence[int]) -> Items:
        """The given rows, in order, as new tensors (for a few rows; `select` keeps many)."""
        index = torch.tensor(list(rows), dtype=torch.int64, device=self.latents.device)
        latents, keys, embeddings, episodes, coarse = (t.index_select(0, index) for t in self._columns())
        return Items(latents, keys, embeddings, [self.owners[i] for i in rows], episodes, coarse)

    def extend(self, other: Items) -> Items:
        """These rows followed by `other`'s (amortised: the cost of `other`'s rows)."""
        n = len(self.owners)
        storage = self._storage or tuple(_Rows(t) for t in self._columns())
        grown = [rows.append(n, new) for rows, new in zip(storage, other._columns())]
        latents, keys, embeddings, episodes, coarse = (view for _, view in grown)
        return Items(latents, keys, embeddings, self.owners + other.owners, episodes, coarse,
                     tuple(s for s, _ in grown))
