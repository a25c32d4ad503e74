"""The memory state: an explicit value that writes return and reads take."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .lowrank import LowRankSum

FORMAT = "larimar.memory_state"
FORMAT_VERSION = 1


class MemoryState:
    """B independent memories, and (for sequential writing) the statistics of their keys.

    Attributes:
        memory: (B, K, C) memory matrices M.
        gram_pinv: (B, K, K) pseudo-inverse A^+ of the Gram matrix A = sum_i alpha_i k_i k_i^T
            of the keys written so far; None after a one-shot `write`, which `update` cannot
            continue.
        free: (B, K, K) projector I - A A^+ onto the key directions not written yet; present
            exactly when `gram_pinv` is.

    Each may be given as a `LowRankSum` (sequential updates defer their low-rank changes); the
    attributes are always plain tensors, folded on first access. The value never changes.

    Example:
        >>> mem = EpisodicMemory(MemoryConfig(slots=8, code_size=4))
        >>> state = mem.empty(batch_size=1)
        >>> state = mem.update(state, torch.randn(1, 1, 4))
        >>> state.memory.shape
        torch.Size([1, 8, 4])
    """

    __slots__ = ("_free", "_gram_pinv", "_memory")

    def __init__(self, memory: Tensor | LowRankSum, gram_pinv: Tensor | LowRankSum | None = None,
                 free: Tensor | LowRankSum | None = None) -> None:
        self._memory = LowRankSum.of(memory)
        self._gram_pinv = None if gram_pinv is None else LowRankSum.of(gram_pinv)
        self._free = None if free is None else LowRankSum.of(free)
        if len(self._memory.shape) != 3:
            raise ValueError(f"memory must be (batch, slots, code_size); got shape {tuple(self._memory.shape)}")
        if (self._gram_pinv is None) != (self._free is None):
            raise ValueError("gram_pinv and free must be given together")
        b, k, _ = self._memory.shape
        for name in ("gram_pinv", "free"):
            t = getattr(self, "_" + name)
            if t is not None and tuple(t.shape) != (b, k, k):
                raise ValueError(f"{name} must have shape {(b, k, k)}; got {tuple(t.shape)}")

    def __repr__(self) -> str:
        b, k, c = self._memory.shape
        return f"MemoryState(batch={b}, slots={k}, code_size={c}, sequential={self.sequential})"

    @property
    def memory(self) -> Tensor:
        """(B, K, C) M."""
        return self._memory.dense()

    @property
    def gram_pinv(self) -> Tensor | None:
        """(B, K, K) A^+, or None."""
        return None if self._gram_pinv is None else self._gram_pinv.dense()

    @property
    def free(self) -> Tensor | None:
        """(B, K, K) I - A A^+, or None."""
        return None if self._free is None else self._free.dense()

    def parts(self) -> tuple[LowRankSum, LowRankSum | None, LowRankSum | None]:
        """(memory, gram_pinv, free) unfolded, for updates and reads that need no dense matrix."""
        return self._memory, self._gram_pinv, self._free

    @property
    def sequential(self) -> bool:
        """Whether `EpisodicMemory.update` can continue from this state."""
        return self._gram_pinv is not None

    def _tensors(self) -> dict[str, Tensor]:
        named = {"memory": self.memory, "gram_pinv": self.gram_pinv, "free": self.free}
        return {name: t for name, t in named.items() if t is not None}

    @property
    def batch_size(self) -> int:
        """B."""
        return self._memory.shape[0]

    @property
    def slots(self) -> int:
        """K."""
        return self._memory.shape[1]

    @property
    def code_size(self) -> int:
        """C."""
        return self._memory.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self._memory.dtype

    @property
    def device(self) -> torch.device:
        return self._memory.device

    def to(self, *args: Any, **kwargs: Any) -> MemoryState:
        """Move or cast every tensor, like `Tensor.to`."""
        return MemoryState(*(None if p is None else p.to(*args, **kwargs) for p in self.parts()))

    def detach(self) -> MemoryState:
        """A copy cut from the autograd graph."""
        return MemoryState(*(None if p is None else p.detach() for p in self.parts()))

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the state to a safetensors file; `metadata` (JSON-serialisable) rides along."""
        tensors = {name: t.detach().contiguous().cpu() for name, t in self._tensors().items()}
        header = {
            "format": FORMAT,
            "version": str(FORMAT_VERSION),
            "metadata": json.dumps(metadata or {}),
        }
        save_file(tensors, str(path), metadata=header)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> MemoryState:
        """Read a state written by `save`; see `load_metadata` for its metadata."""
        tensors, _ = load_state_file(path, device)
        return cls(tensors["memory"], tensors.get("gram_pinv"), tensors.get("free"))


def load_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata dictionary stored with a saved state."""
    return load_state_file(path, "cpu", tensors=False)[1]


def load_state_file(
    path: str | Path, device: str | torch.device, tensors: bool = True
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Open and validate a saved state; returns its tensors and metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no memory state file at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
            # clone: a fresh allocation has the allocator's alignment, as a computed tensor does;
            # some BLAS builds pick kernels (and rounding) by operand alignment.
            loaded = {key: f.get_tensor(key).clone() for key in f.keys()} if tensors else {}
    except Exception as err:  # safetensors raises its own error types for a corrupt file
        raise ValueError(f"{path} is not a readable memory state file: {err}") from err
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is a safetensors file but not a larimar memory state")
    if int(header.get("version", "0")) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer larimar (format {header['version']}); upgrade larimar")
    return loaded, json.loads(header.get("metadata", "{}"))
