"""Exact sequential least squares (RLS) with writing and forgetting, as rank-one updates.

Legend:
    M (B, K, C)  memory, the minimum-norm least-squares solution A^+ Bz over the active items
    A (B, K, K)  Gram matrix sum_i alpha_i k_i k_i^T of the active keys (not stored)
    R (B, K, K)  A^+, its pseudo-inverse
    F (B, K, K)  I - A A^+, the projector onto the key directions never written ("free")
    k (B, K) key, z (B, C) value, alpha (B,) weight (+1 writes, -1 forgets)

This is the paper's recursion C_i = C_{i-1} + alpha W^T W, M_i = M_{i-1} + alpha C_i^-1 W^T (Z - W M)
taken in the limit of a vanishing prior (C_0 = lambda I, lambda -> 0), which the usual
Sherman-Morrison form cannot compute in floating point: it would need 1/lambda. Splitting
(lambda I + A)^-1 = F / lambda + A^+ + O(lambda) gives three exact cases for a key k:

1. k has a component u = F k outside the written directions (rank grows):
   M += u (z - k M) / |u|^2,  F -= u u^T / |u|^2,
   R += -(v u^T + u v^T) / |u|^2 + (1/alpha + beta) u u^T / |u|^4   (v = R k, beta = k.v).
2. k lies in the written directions and d = 1/alpha + beta != 0 (Sherman-Morrison):
   M += v (z - k M) / d,  R -= v v^T / d.
3. k lies in the written directions and d = 0: forgetting the only support of the direction
   v = R k (rank drops); with Q = I - v v^T / |v|^2:
   M = Q M + Q R v (z - k M) / |v|^2,  R = Q R Q,  F += v v^T / |v|^2.

Each case changes M, R and F by rank one or two; the updates are deferred (`LowRankSum`): a
write reads R and F once, M not at all (k M enters through `LowRankSum.assign`), and rewrites
none of them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import MemoryInputError
from .lowrank import LowRankSum

State = tuple[LowRankSum, LowRankSum, LowRankSum]


def rank_one_update(
    memory: LowRankSum, gram_pinv: LowRankSum, free: LowRankSum, key: Tensor, value: Tensor, alpha: Tensor,
    tol: float,
) -> State:
    """Add (alpha > 0) or remove (alpha < 0) one item in each of B memories.

    Args:
        memory: (B, K, C) M.
        gram_pinv: (B, K, K) R = A^+.
        free: (B, K, K) F = I - A A^+.
        key: (B, K) k.
        value: (B, C) z.
        alpha: (B,) non-zero weights.
        tol: relative tolerance that decides "outside the written directions" and "d = 0".

    Returns:
        The new (memory, gram_pinv, free); inputs are not modified.

    Not differentiable in key, value or alpha: each item's case and coefficients are made on
    the host from one sync of its scalars (fewer small tensor operations per write).

    Raises:
        MemoryInputError: when a negative weight targets a key direction that was never written.
    """
    u = free.matvec(key)  # (B, K)
    v = gram_pinv.matvec(key)  # (B, K)
    pairs = (torch.stack([key, u, key], 1) * torch.stack([key, u, v], 1)).sum(-1)  # (B, 3): k.k, u.u, k.v
    stats, alphas = pairs.tolist(), alpha.tolist()  # one host sync; the cases and coefficients are made there
    cases = [_case(*col, a, tol) for col, a in zip(stats, alphas)]
    kinds = set(cases)
    uu = [col[1] for col in stats]
    d = [1.0 / a + col[2] for col, a in zip(stats, alphas)]  # 1/alpha + beta

    new: tuple[Tensor, ...] | None = None
    for kind in ("grow", "keep", "drop"):
        if kind not in kinds:
            continue
        if kind == "grow":
            result = _grow(memory, gram_pinv, free, key, value, u, v, uu, d)
        elif kind == "keep":
            result = _keep(memory, gram_pinv, free, key, value, v, [x if x != 0 else 1.0 for x in d])
        else:
            result = _drop(memory, gram_pinv, free, key, value, v)
        if len(kinds) == 1:
            return result
        mask = torch.tensor([c == kind for c in cases], device=key.device)
        dense = tuple(part.dense() for part in result)
        new = dense if new is None else _select(mask, dense, new)
    assert new is not None
    return LowRankSum(new[0]), LowRankSum(new[1]), LowRankSum(new[2])


def _case(kk: float, uu: float, beta: float, alpha: float, tol: float) -> str:
    """Which of the three exact cases an item is, decided on the host from its scalars."""
    if not all(math.isfinite(x) for x in (kk, uu, beta)):
        raise MemoryInputError("the memory statistics are not finite; the memory was not changed")
    if uu > tol * kk:
        if alpha < 0:
            raise MemoryInputError("cannot forget an item whose key was never written; the memory was not changed")
        return "grow"
    inv_alpha = 1.0 / alpha
    return "drop" if abs(inv_alpha + beta) <= tol * (abs(inv_alpha) + abs(beta)) else "keep"


def _symmetric(base: LowRankSum, vecs: Tensor, coef: Tensor) -> LowRankSum:
    """base + vecs @ coef @ vecs^T: vecs (B, K, n), coef (B, n, n)."""
    return base.plus(vecs @ coef, vecs.mT)


def _keep(memory: LowRankSum, gram_pinv: LowRankSum, free: LowRankSum, key: Tensor, value: Tensor, v: Tensor,
          d: list[float]) -> State:
    """Case 2: Sherman-Morrison inside the written directions (d: the B non-zero 1/alpha + beta)."""
    m = memory.assign((v / v.new_tensor(d)[:, None]).unsqueeze(-1), key.unsqueeze(-1), value.unsqueeze(1))
    r = _symmetric(gram_pinv, v.unsqueeze(-1), v.new_tensor([[[-1 / x]] for x in d]))
    return m, r, free


def _grow(memory: LowRankSum, gram_pinv: LowRankSum, free: LowRankSum, key: Tensor, value: Tensor, u: Tensor,
          v: Tensor, uu: list[float], c: list[float]) -> State:
    """Case 1: the key opens a new direction u (uu: the B values of |u|^2, c: of 1/alpha + beta)."""
    uu = [max(x, torch.finfo(u.dtype).tiny) for x in uu]
    m = memory.assign((u / u.new_tensor(uu)[:, None]).unsqueeze(-1), key.unsqueeze(-1), value.unsqueeze(1))
    coef = u.new_tensor([[[cb / (x * x), -1 / x], [-1 / x, 0.0]] for cb, x in zip(c, uu)])  # (B, 2, 2)
    r = _symmetric(gram_pinv, torch.stack([u, v], dim=-1), coef)
    f = _symmetric(free, u.unsqueeze(-1), u.new_tensor([[[-1 / x]] for x in uu]))
    return m, r, f


def _drop(memory: LowRankSum, gram_pinv: LowRankSum, free: LowRankSum, key: Tensor, value: Tensor,
          v: Tensor) -> State:
    """Case 3: forgetting removes the direction v = R k."""
    vv = v.square().sum(-1).clamp_min(torch.finfo(v.dtype).tiny)  # (B,)
    n = v / vv.sqrt()[:, None]  # (B, K) unit vector
    rv = gram_pinv.matvec(n)  # (B, K)
    q_rv = rv - n * (n * rv).sum(-1, keepdim=True)  # Q R n
    # M' = Q M + Q R n (z - k M) / |v| = M + n (0 - n^T M) + (Q R n / |v|) (z - k^T M), both from M
    m = memory.assign(torch.stack([n, q_rv / vv.sqrt()[:, None]], -1), torch.stack([n, key], -1),
                      torch.stack([torch.zeros_like(value), value], 1))
    nrn = (n * rv).sum(-1)
    vecs = torch.stack([n, rv], dim=-1)  # (B, K, 2)
    coef = torch.stack(
        [torch.stack([nrn, -torch.ones_like(nrn)], -1), torch.stack([-torch.ones_like(nrn), torch.zeros_like(nrn)], -1)],
        -2,
    )  # Q R Q = R - n rv^T - rv n^T + (n.R.n) n n^T
    r = _symmetric(gram_pinv, vecs, coef)
    f = _symmetric(free, n.unsqueeze(-1), torch.ones_like(nrn)[:, None, None])
    return m, r, f


def _select(mask: Tensor, chosen: tuple[Tensor, ...], other: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Per batch element, take `chosen` where mask (B,) is set, else `other`."""
    if mask.all():
        return chosen
    return tuple(torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b) for a, b in zip(chosen, other))
