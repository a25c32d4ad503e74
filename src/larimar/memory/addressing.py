"""Where reading/writing weights (keys) W come from.

Symbols: z (B, E, C) latents; M (B, K, C) a memory; M_ref (K, C) a fixed reference memory
(the prior M0); W (B, E, K) the keys, one weight per slot.
"""

from __future__ import annotations

import torch
from torch import Tensor


def memory_keys(z: Tensor, memory_pinv: Tensor) -> Tensor:
    """Auto-associative keys from the current memory, W = z M^+.

    Args:
        z: (B, E, C) latents.
        memory_pinv: (B, C, K) pseudo-inverse of the current memory.

    Returns:
        (B, E, K) keys.
    """
    return z @ memory_pinv


def reference_keys(z: Tensor, reference_pinv: Tensor, selection: Tensor | None = None) -> Tensor:
    """Hetero-associative keys from a fixed reference memory, W = z M_ref^+.

    Args:
        z: (B, E, C) latents (usually of the prompt, not of the whole fact).
        reference_pinv: (C, K) pseudo-inverse of the reference memory.
        selection: `column_selection(reference_pinv)`, when it is one: the keys are then
            gathered from z instead of multiplied (the same values, without reading the matrix).

    Returns:
        (B, E, K) keys; the same z always gives the same key, so an item can be forgotten later.
    """
    return z @ reference_pinv if selection is None else z.index_select(-1, selection)


def column_selection(matrix: Tensor) -> Tensor | None:
    """(K,) the row of the single 1 in each column of `matrix` (C, K) when every column is a
    unit vector e_i (the identity reference memory, as initialised), so that z @ matrix equals
    z[..., index]; None for any other matrix."""
    ones = matrix == 1
    if matrix.dim() != 2 or not bool((ones | (matrix == 0)).all()) or not bool((ones.sum(0) == 1).all()):
        return None
    return ones.to(torch.uint8).argmax(0)


def gaussian_keys(z: Tensor, reference: Tensor, width: float = 1e-3) -> Tensor:
    """Gaussian-convolution keys: w_k ~ exp(-||z - M_ref[k]||^2 / (2 a s(z)^2)), normalised.

    s(z) is the distance from z to its nearest reference row, so the key is nearly one-hot on
    that row for small a and capacity grows with K rather than C.

    Args:
        z: (B, E, C) latents.
        reference: (K, C) reference memory rows.
        width: the factor a.

    Returns:
        (B, E, K) keys whose entries sum to one over K.
    """
    sq_dist = torch.cdist(z, reference.expand(z.shape[0], -1, -1)).square()  # (B, E, K)
    nearest = sq_dist.amin(dim=-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)  # (B, E, 1)
    return torch.softmax(-sq_dist / (2 * width * nearest), dim=-1)
