"""A matrix kept as (I + X Y^T) base + left @ right, so that a run of low-rank updates costs a
pass over the base per use instead of a rewrite of it per update.

Sequential writing changes the memory M (K, C) and its key statistics (K, K) by rank one or two
per item. Applied at once, each write would read and rewrite all three (about 34 MB for one
512-slot episode of the built-in model). Deferred, a write reads only the two (K, K) statistics
(its key's products with them) and appends its factors: `plus` adds left @ right, and `assign`,
M + a (z - k^T M), which is how the RLS write changes M, needs k^T M only through the factors,
so the memory itself is not read at all. The factors are folded into the base once they reach
`FOLD_RANK` columns, in one product for all of them.

Shapes: B batch, K rows, X columns, r deferred rank, m items of one update.
"""

from __future__ import annotations

import torch
from torch import Tensor

FOLD_RANK = 32
"""Deferred columns at which an update folds the factors into the base."""
EAGER_SIZE = 1 << 16
"""Matrices of at most this many entries (per batch element) fold at once: rewriting them is
cheaper than the bookkeeping of deferring (measured with `benchmarks/memory.py`)."""

_Parts = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]


def _cat(old: Tensor | None, new: Tensor, dim: int) -> Tensor:
    return new if old is None else torch.cat([old, new], dim)


class LowRankSum:
    """The (B, K, X) matrix (I + x @ y^T) base + left @ right, with x, y (B, K, r1), left
    (B, K, r2) and right (B, r2, X); absent factors are zero.

    The value never changes. `dense` replaces the representation by the folded matrix (an
    equal value), in one attribute assignment, so readers in other threads see either form.
    """

    __slots__ = ("_parts",)

    def __init__(self, base: Tensor, left: Tensor | None = None, right: Tensor | None = None,
                 x: Tensor | None = None, y: Tensor | None = None) -> None:
        if (left is None) != (right is None) or (x is None) != (y is None):
            raise ValueError("left and right factors (and x and y) must be given together")
        self._parts: _Parts = (base, left, right, x, y)

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
        _, left, _, x, _ = self._parts
        return (0 if left is None else left.shape[-1]) + (0 if x is None else x.shape[-1])

    def dense(self) -> Tensor:
        """The matrix as one tensor (folds the factors once; later calls return the same tensor)."""
        parts = self._parts
        if parts[1] is None and parts[3] is None:
            return parts[0]
        folded = _fold(parts)
        self._parts = (folded, None, None, None, None)
        return folded

    def matvec(self, v: Tensor) -> Tensor:
        """A v for v (B, X): (B, K)."""
        base, left, right, x, y = self._parts
        out = base @ v.unsqueeze(-1)
        if x is not None:
            out = torch.baddbmm(out, x, y.mT @ out)
        if left is not None:
            out = torch.baddbmm(out, left, right @ v.unsqueeze(-1))
        return out.squeeze(-1)

    def left_multiply(self, w: Tensor) -> Tensor:
        """w A for w (B, Q, K): (B, Q, X)."""
        base, left, right, x, y = self._parts
        out = (w if x is None else torch.baddbmm(w, w @ x, y.mT)) @ base
        if left is not None:
            out = torch.baddbmm(out, w @ left, right)
        return out

    def plus(self, left: Tensor, right: Tensor) -> LowRankSum:
        """This matrix + left @ right, left (B, K, n) and right (B, n, X), as a new LowRankSum;
        this one is unchanged."""
        base, old_left, old_right, x, y = self._parts
        return _settled((base, _cat(old_left, left, -1), _cat(old_right, right, -2), x, y))

    def assign(self, a: Tensor, keys: Tensor, values: Tensor) -> LowRankSum:
        """This matrix A + a (values - keys^T A), a and keys (B, K, m), values (B, m, X), with
        keys^T A taken from this matrix (all m at once), as a new LowRankSum; the base is not read.

        With keys^T A = (keys + y x^T keys)^T base + (keys^T left) right, the result is
        (I + [x, -a] [y, keys + y x^T keys]^T) base + [left - a keys^T left, a] [right; values].
        """
        base, left, right, x, y = self._parts
        if _small(base):
            dense = self.dense()
            return LowRankSum(torch.baddbmm(dense, a, values - keys.mT @ dense))
        through = keys if x is None else torch.baddbmm(keys, y, x.mT @ keys)  # (B, K, m)
        if left is not None:
            left = torch.baddbmm(left, a, keys.mT @ left, alpha=-1)
        return _settled((base, _cat(left, a, -1), _cat(right, values, -2), _cat(x, -a, -1), _cat(y, through, -1)))

    def to(self, *args: object, **kwargs: object) -> LowRankSum:
        """Every part moved or cast, like `Tensor.to`."""
        return LowRankSum(*(None if t is None else t.to(*args, **kwargs) for t in self._parts))  # type: ignore[arg-type]

    def detach(self) -> LowRankSum:
        """A copy cut from the autograd graph."""
        return LowRankSum(*(None if t is None else t.detach() for t in self._parts))


def _fold(parts: _Parts) -> Tensor:
    """(I + x y^T) base + left right as one new tensor."""
    base, left, right, x, y = parts
    out = base if x is None else torch.baddbmm(base, x, y.mT @ base)
    return out if left is None else torch.baddbmm(out, left, right)


def _small(base: Tensor) -> bool:
    """Whether a matrix is updated at once rather than deferred (see EAGER_SIZE)."""
    return base[0].numel() <= EAGER_SIZE


def _settled(parts: _Parts) -> LowRankSum:
    """A LowRankSum of parts, folded when its deferred rank passes FOLD_RANK or its matrix is small."""
    deferred = LowRankSum(*parts)
    if deferred.rank > FOLD_RANK or _small(parts[0]):
        return LowRankSum(_fold(parts))
    return deferred
