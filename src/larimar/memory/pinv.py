"""Moore-Penrose pseudo-inverses, exact and iterative, batched over leading dimensions.

Symbols: A is (..., m, n), A^+ is (..., n, m), sigma are the singular values of A.
"""

from __future__ import annotations

import torch
from torch import Tensor


def default_rtol(dtype: torch.dtype) -> float:
    """Relative cut-off for small singular values: sqrt(machine epsilon) of `dtype`."""
    return torch.finfo(dtype).eps ** 0.5


def exact_pinv(a: Tensor, rtol: float | None = None) -> Tensor:
    """Pseudo-inverse by SVD; singular values below rtol * sigma_max count as zero.

    Args:
        a: (..., m, n) matrices.
        rtol: relative cut-off; None uses `default_rtol(a.dtype)`.

    Returns:
        (..., n, m) pseudo-inverses.

    LAPACK's divide-and-conquer SVD occasionally fails to converge on low-rank float32 input
    (a memory holding one fact is rank one); then the pseudo-inverse is computed in float64 from
    the eigendecomposition of the smaller Gram matrix instead.
    """
    rtol = default_rtol(a.dtype) if rtol is None else rtol
    try:
        return torch.linalg.pinv(a, rtol=rtol)
    except torch.linalg.LinAlgError:
        return gram_pinv(a.double(), rtol).to(a.dtype)


def gram_pinv(a: Tensor, rtol: float) -> Tensor:
    """Pseudo-inverse through eigh of the smaller Gram matrix G (A^+ = G^+ A^T or A^T G^+).

    Eigenvalues of G are squared singular values, so the cut-off is rtol^2 * lambda_max, but
    never below what eigh resolves (a few eps * size * lambda_max).
    """
    tall = a.shape[-2] >= a.shape[-1]
    gram = a.mT @ a if tall else a @ a.mT  # (..., min(m, n), min(m, n))
    evals, evecs = torch.linalg.eigh(gram)
    floor = 10 * gram.shape[-1] * torch.finfo(a.dtype).eps
    keep = evals > max(rtol**2, floor) * evals.amax(dim=-1, keepdim=True).clamp_min(0)
    inv = torch.where(keep, evals.reciprocal(), torch.zeros_like(evals))
    gram_inv = (evecs * inv.unsqueeze(-2)) @ evecs.mT
    return gram_inv @ a.mT if tall else a.mT @ gram_inv


def iterative_pinv(a: Tensor, steps: int = 15) -> Tensor:
    """Pseudo-inverse by the Ben-Israel-Cohen (Newton-Schulz) iteration X <- 2X - X A X.

    The start X0 = A^T / ||A||_F^2 satisfies alpha * sigma_max^2 <= 1 < 2 for every input scale,
    so the iteration cannot diverge; each singular value sigma converges once
    (1 - sigma^2 / ||A||_F^2) ** (2 ** steps) is small, so tiny singular values are damped
    (a regularised pseudo-inverse) unless `steps` is large.

    Args:
        a: (..., m, n) matrices; all-zero matrices give all-zero pseudo-inverses.
        steps: number of iterations.

    Returns:
        (..., n, m) approximate pseudo-inverses.
    """
    m, n = a.shape[-2], a.shape[-1]
    sq_norm = a.square().sum(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    scale = torch.where(sq_norm > 0, sq_norm.reciprocal(), torch.zeros_like(sq_norm))
    x = scale * a.mT  # (..., n, m)
    for _ in range(steps):
        # Multiply in the order whose intermediate is the smaller square.
        x = 2 * x - (x @ (a @ x) if m <= n else (x @ a) @ x)
    return x


def pinv(a: Tensor, method: str = "exact", steps: int = 15, rtol: float | None = None) -> Tensor:
    """Dispatch to `exact_pinv` or `iterative_pinv` by name."""
    if method == "exact":
        return exact_pinv(a, rtol)
    if method == "iterative":
        return iterative_pinv(a, steps)
    raise ValueError(f"unknown pinv method {method!r}; use 'exact' or 'iterative'")
