"""A matrix kept as base + left @ right, so that a run of low-rank updates costs a pass over the
base per use instead of a rewrite of it per update.

Sequential writing changes the memory M (K, C) and its key statistics (K, K) by rank one or two
per item. Applied at once, each write would read and rewrite all three (about 34 MB for one
512-slot episode of the built-in model). Deferred, a write only reads them (its key's products
with them) and appends its factors; the factors are folded into the base once they reach
`FOLD_RANK` columns, in one product for all of them.

Shapes: B batch, K rows, X columns, r deferred rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

FOLD_RANK = 32
"""Deferred columns at which `LowRankSum.plus` folds the factors into the base."""
EAGER_SIZE = 1 << 16
"""Matrices of at most this many entries (per batch element) fold at once: rewriting them is
cheaper than the bookkeeping of deferring (measured with `benchmarks/memory.py`)."""


class LowRankSum:
    """The (B, K, X) matrix base + left @ right with left (B, K, r) and right (B, r, X).

    The value never changes. `dense` replaces the representation by the folded matrix (an
    equal value), in one attribute assignment, so readers in other threads see either form.
    """

    __slots__ = ("_parts",)

    def __init__(self, base: Tensor, left: Tensor | None = None, right: Tensor | None = None) -> None:
        if (left is None) != (right is None):
            raise ValueError("left and right factors must be given together")
        self._parts: tuple[Tensor, Tensor | None, Tensor | None] = (base, left, right)

    @classmethod
    def of(cls, matrix: Tensor | LowRankSum) -> LowRankSum:
        """`matrix` as a LowRankSum (itself when it is one)."""
        return matrix if isinstance(matrix, LowRankSum) else cls(matrix)

    @property
    def shape(self) -> torch.Size:
        return self._parts[0].shape

    @property
    def dtype(self) -> torch.dtype:
        return self._parts[0].dtype

    @property
    def device(self) -> torch.device:
        return self._parts[0].device

    @property
    def rank(self) -> int:
        """Deferred columns not yet folded into the base."""
        left = self._parts[1]
        return 0 if left is None else left.shape[-1]

    def dense(self) -> Tensor:
        """The matrix as one tensor (folds the factors once; later calls return the same tensor)."""
        base, left, right = self._parts
        if left is None:
            return base
        folded = torch.baddbmm(base, left, right)
        self._parts = (folded, None, None)
        return folded

    def matvec(self, x: Tensor) -> Tensor:
        """A x for x (B, X): (B, K)."""
        base, left, right = self._parts
        out = (base @ x.unsqueeze(-1)).squeeze(-1)
        if left is not None:
            out = out + (left @ (right @ x.unsqueeze(-1))).squeeze(-1)
        return out

    def left_multiply(self, w: Tensor) -> Tensor:
        """w A for w (B, Q, K): (B, Q, X)."""
        base, left, right = self._parts
        out = w @ base
        if left is not None:
            out = torch.baddbmm(out, w @ left, right)
        return out

    def plus(self, left: Tensor, right: Tensor) -> LowRankSum:
        """This matrix + left @ right, left (B, K, n) and right (B, n, X), as a new LowRankSum
        (folded once the deferred rank would pass FOLD_RANK, or at once for a small matrix);
        this one is unchanged."""
        base, old_left, old_right = self._parts
        if old_left is not None:
            left, right = torch.cat([old_left, left], -1), torch.cat([old_right, right], -2)
        if left.shape[-1] > FOLD_RANK or base[0].numel() <= EAGER_SIZE:
            return LowRankSum(torch.baddbmm(base, left, right))
        return LowRankSum(base, left, right)

    def to(self, *args: object, **kwargs: object) -> LowRankSum:
        """Every part moved or cast, like `Tensor.to`."""
        return LowRankSum(*(None if t is None else t.to(*args, **kwargs) for t in self._parts))  # type: ignore[arg-type]

    def detach(self) -> LowRankSum:
        """A copy cut from the autograd graph."""
        return LowRankSum(*(None if t is None else t.detach() for t in self._parts))
