"""The episodic memory: closed-form least-squares writes, reads, and sequential RLS updates.

Legend (shapes carry these letters):
    B  independent memories in a batch          K  slots (rows of M)
    E  items written in one call                C  code size (width of a latent)
    Q  queries read in one call                 M  (B, K, C) memory; M0 (K, C) learned prior
    W  (B, E|Q, K) keys / reading weights

One-shot write:   W0 = Z M0^+,  M = W0^+ Z          (least squares min ||Z - W0 M||)
Read:             W = Zq M^+,   Zr = W M            (orthogonal projection onto span(Z))
Sequential write: recursive least squares, one rank-one update per item (see `rls.py`);
                  alpha = -1 forgets, and the result equals the one-shot write of what remains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .addressing import column_selection, gaussian_keys, memory_keys, reference_keys
from .config import MemoryConfig
from .errors import MemoryInputError
from .pinv import pinv
from .rls import rank_one_update
from .state import MemoryState


@dataclass(frozen=True)
class SampledRead:
    """A stochastic read used in training.

    Attributes:
        z: (B, Q, C) readouts from sampled weights.
        weights: (B, Q, K) the sampled reading weights.
        kl: (B, Q) KL(N(W_mean, sigma^2) || N(0, I)) of each query's weights.
    """

    z: Tensor
    weights: Tensor
    kl: Tensor


class EpisodicMemory(nn.Module):
    """A Kanerva-style memory of K x C with a learned prior, batched over B independent memories.

    The module owns only parameters (the prior M0 and the reading-weight variance); the
    memory contents are an explicit `MemoryState` value that every method takes and returns,
    so nothing is mutated in place and a failed call leaves the caller's state intact.

    Example:
        >>> mem = EpisodicMemory(MemoryConfig(slots=64, code_size=16)).double()
        >>> z = torch.randn(2, 5, 16, dtype=torch.float64)
        >>> state = mem.write(z)
        >>> torch.allclose(mem.read(state, z), z)
        True
    """

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__()
        self.config = config
        k, c = config.slots, config.code_size
        self.prior = nn.Parameter(torch.eye(k, c), requires_grad=config.learn_prior)  # (K, C)
        log_var = torch.full((k,), 2 * math.log(config.read_std_init))
        self.read_log_var = nn.Parameter(log_var)  # (K,)
        self._ref_pinv_cache: tuple[tuple, Tensor, Tensor | None] | None = None

    # ----------------------------------------------------------------------------- helpers
    def _pinv(self, a: Tensor) -> Tensor:
        cfg = self.config
        return pinv(a, cfg.pinv, cfg.pinv_steps, cfg.pinv_rtol)

    def _prior_like(self, z: Tensor) -> Tensor:
        return self._key(self.prior.to(device=z.device, dtype=z.dtype))  # (K, C_key)

    def _key(self, z: Tensor) -> Tensor:
        """The addressing part of latents or memory rows: the first key_size coordinates."""
        k = self.config.key_size
        return z if k is None or k == z.shape[-1] else z[..., :k]

    def reference_pinv(self, like: Tensor) -> Tensor:
        """(C_key, K) pseudo-inverse of the prior's addressing columns, cached while the prior
        is not being trained."""
        return self._reference(like)[0]

    def _reference(self, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """The reference pseudo-inverse and its `column_selection` (None unless it is one), cached
        while the prior is not being trained (while it is: the pseudo-inverse alone, recomputed)."""
        if torch.is_grad_enabled() and self.prior.requires_grad:
            return self._pinv(self._prior_like(like)), None
        key = (self.prior._version, self.prior.data_ptr(), like.device, like.dtype, self.config.pinv)
        if self._ref_pinv_cache is None or self._ref_pinv_cache[0] != key:  # convert the prior only on a miss
            ref = self._pinv(self._prior_like(like).detach())
            self._ref_pinv_cache = (key, ref, column_selection(ref))
        return self._ref_pinv_cache[1], self._ref_pinv_cache[2]

    def _check(self, z: Tensor, name: str = "latents", batch: int | None = None) -> None:
        c = self.config.code_size
        if not isinstance(z, Tensor):
            raise MemoryInputError(f"{name} must be a torch.Tensor; got {type(z).__name__}")
        if not z.is_floating_point():
            raise MemoryInputError(f"{name} must be a floating-point tensor; got {z.dtype}")
        if z.dim() != 3:
            raise MemoryInputError(
                f"{name} must have shape (batch, items, {c}); got {tuple(z.shape)}"
                + (" (add a batch dimension with .unsqueeze(0))" if z.dim() == 2 else "")
            )
        if z.shape[-1] != c:
            raise MemoryInputError(f"memory has code size {c}; got {name} of width {z.shape[-1]}")
        if z.shape[0] == 0 or z.shape[1] == 0:
            raise MemoryInputError(f"{name} are empty (shape {tuple(z.shape)}); nothing to do")
        if batch is not None and z.shape[0] != batch:
            raise MemoryInputError(f"the state holds {batch} memories; got {name} for {z.shape[0]}")
        if not _all_finite(z):
            raise MemoryInputError(f"{name} contain NaN or infinite values; the memory was not changed")

    def _check_keys(self, keys: Tensor, z: Tensor) -> None:
        expected = (*z.shape[:2], self.config.slots)
        if tuple(keys.shape) != expected:
            raise MemoryInputError(f"keys must have shape {expected} (batch, items, slots); got {tuple(keys.shape)}")
        if not _all_finite(keys):
            raise MemoryInputError("keys contain NaN or infinite values; the memory was not changed")

    def _check_state(self, state: MemoryState, like: Tensor) -> None:
        k, c = self.config.slots, self.config.code_size
        if (state.slots, state.code_size) != (k, c):
            raise MemoryInputError(
                f"state holds memories of {(state.slots, state.code_size)}; this module is {k} x {c}"
            )
        if state.device != like.device or state.dtype != like.dtype:
            raise MemoryInputError(
                f"state is {state.dtype} on {state.device} but the input is "
                f"{like.dtype} on {like.device}; move one with .to()"
            )

    def _noisy(self, z: Tensor) -> Tensor:
        sigma = self.config.observation_noise
        return z + sigma * torch.randn_like(z) if self.training and sigma > 0 else z

    def rls_tol(self, dtype: torch.dtype) -> float:
        """Relative tolerance of the sequential write's rank decisions."""
        return self.config.rls_tol or torch.finfo(dtype).eps ** 0.5

    # ----------------------------------------------------------------------------- addressing
    def address(self, z: Tensor) -> Tensor:
        """Write keys for `z` (B, E, C) from the fixed reference memory (the prior): (B, E, K)."""
        self._check(z)
        if self.config.addressing == "gaussian":
            return gaussian_keys(self._key(z), self._prior_like(z), self.config.gaussian_width)
        return reference_keys(self._key(z), *self._reference(z))

    def read_weights(self, state: MemoryState, z_query: Tensor) -> Tensor:
        """Reading weights from the current memory, W = Zq M^+: (B, Q, K)."""
        self._check(z_query, "queries", state.batch_size)
        self._check_state(state, z_query)
        return memory_keys(self._key(z_query), self._pinv(self._key(state.memory)))

    # ----------------------------------------------------------------------------- operations
    def empty(
        self, batch_size: int = 1, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MemoryState:
        """B empty memories ready for sequential `update`: M = 0, A^+ = 0, all key directions free."""
        dtype = dtype or self.prior.dtype
        device = device or self.prior.device
        k, c = self.config.slots, self.config.code_size
        memory = torch.zeros(batch_size, k, c, device=device, dtype=dtype)
        gram_pinv = torch.zeros(batch_size, k, k, device=device, dtype=dtype)
        free = torch.eye(k, device=device, dtype=dtype).expand(batch_size, k, k).clone()
        return MemoryState(memory, gram_pinv, free)

    def write(self, z: Tensor, keys: Tensor | None = None, sequential: bool = False) -> MemoryState:
        """One-shot least-squares write of E items into B fresh memories.

        Args:
            z: (B, E, C) latents to store (values).
            keys: (B, E, K) write keys; None derives them with `address(z)` (W0 = Z M0^+).
            sequential: also keep the key statistics, so that `update` can continue from the
                result (computed as `update` from `empty`: the same memory, item by item; without
                gradients).

        Returns:
            The new state; M = W0^+ Z, so reading a written z with memory keys returns it.
        """
        self._check(z)
        if keys is not None:
            self._check_keys(keys, z)
        z = self._noisy(z)
        if sequential:
            return self.update(self.empty(z.shape[0], z.device, z.dtype), z, keys=keys)
        w = self.address(z) if keys is None else keys  # (B, E, K)
        memory = self._pinv(w) @ z  # (B, K, E) @ (B, E, C) -> (B, K, C)
        _check_result(memory)
        return MemoryState(memory)

    def read(self, state: MemoryState, z_query: Tensor, keys: Tensor | None = None) -> Tensor:
        """Deterministic readout Zr = W M.

        Args:
            state: the memories to read.
            z_query: (B, Q, C) queries.
            keys: (B, Q, K) reading weights; None uses W = Zq M^+ (auto-associative). Pass
                `address(z_key)` to recall the value stored under a key (hetero-associative).

        Returns:
            (B, Q, C) readouts.
        """
        if keys is None:
            keys = self.read_weights(state, z_query)
        else:
            self._check(z_query, "queries", state.batch_size)
            self._check_state(state, z_query)
            self._check_keys(keys, z_query)
        return state.parts()[0].left_multiply(keys)  # (B, Q, K) @ (B, K, C) -> (B, Q, C)

    def read_sampled(self, state: MemoryState, z_query: Tensor) -> SampledRead:
        """Stochastic read for training: W = W_mean + sigma * eps with a learned per-slot sigma."""
        w_mean = self.read_weights(state, z_query)  # (B, Q, K)
        log_var = self.read_log_var.to(w_mean)  # (K,)
        weights = w_mean + torch.exp(0.5 * log_var) * torch.randn_like(w_mean)
        kl = 0.5 * (w_mean.square() + log_var.exp() - 1 - log_var).sum(dim=-1)  # (B, Q)
        return SampledRead(weights @ state.memory, weights, kl)

    def generate(self, state: MemoryState, n: int) -> Tensor:
        """Sample n latents from each memory with prior weights W ~ N(0, I): (B, n, C)."""
        if n < 1:
            raise MemoryInputError(f"number of samples must be >= 1; got {n}")
        m = state.memory
        w = torch.randn(m.shape[0], n, m.shape[1], device=m.device, dtype=m.dtype)  # (B, n, K)
        return w @ m

    @torch.no_grad()
    def update(
        self, state: MemoryState, z: Tensor, alpha: float | Tensor = 1.0, keys: Tensor | None = None
    ) -> MemoryState:
        """Sequential recursive-least-squares write of E items (alpha=+1) or forgetting (alpha=-1).

        The result is the least-squares memory over all writes still active, so writing items
        one at a time equals writing them together, and forgetting an item restores the state
        that never saw it.

        Args:
            state: a state with key statistics (from `empty` or `write(..., sequential=True)`).
            z: (B, E, C) latents (values), applied one item after another.
            alpha: weight of the items: a float, or a (B, E) / (E,) tensor; -1 forgets.
            keys: (B, E, K) keys; None derives them with `address(z)`. Forgetting needs the same
                keys that wrote the item.

        Returns:
            The new state; `state` itself is never modified.

        Not differentiable (run-time editing; each item's coefficients are made on the host):
        it runs without gradients. Train through `write`.
        """
        if not state.sequential:
            raise MemoryInputError(
                "this state has no key statistics; start from empty() or write(..., sequential=True)"
            )
        self._check(z, batch=state.batch_size)
        self._check_state(state, z)
        if keys is not None:
            self._check_keys(keys, z)
        w = self.address(z) if keys is None else keys  # (B, E, K)
        alphas = _weights(alpha, z)  # (B, E)
        m, r, f = state.parts()
        tol = self.rls_tol(z.dtype)
        for i in range(z.shape[1]):
            m, r, f = rank_one_update(m, r, f, w[:, i], z[:, i], alphas[:, i], tol)  # type: ignore[arg-type]
        return MemoryState(m, r, f)


def _weights(alpha: float | Tensor, z: Tensor) -> Tensor:
    """alpha broadcast to (B, E), with a clear error for zero or non-finite weights."""
    if isinstance(alpha, (int, float)):
        if alpha == 0 or not math.isfinite(alpha):
            raise MemoryInputError("alpha must be finite and non-zero (+1 writes, -1 forgets)")
        return z.new_full(z.shape[:2], float(alpha))
    a = torch.as_tensor(alpha, device=z.device, dtype=z.dtype)
    try:
        a = a.expand(z.shape[:2])
    except RuntimeError as err:
        raise MemoryInputError(
            f"alpha must be a number or have shape (items,) or (batch, items) = {tuple(z.shape[:2])}; "
            f"got {tuple(a.shape)}"
        ) from err
    if not _all_finite(a) or (a == 0).any():
        raise MemoryInputError("alpha must be finite and non-zero (+1 writes, -1 forgets)")
    return a


def _all_finite(t: Tensor) -> bool:
    """One reduction instead of an elementwise test: a NaN or inf anywhere makes the sum non-finite."""
    return bool(torch.isfinite(t.sum()))


def _check_result(*tensors: Tensor) -> None:
    for t in tensors:
        if not _all_finite(t):
            raise MemoryInputError(
                "the write produced non-finite values (singular keys, or forgetting an item that was "
                "never written); the memory was not changed"
            )
