"""The memory state: an explicit value that writes return and reads take."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

FORMAT = "larimar.memory_state"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MemoryState:
    """B independent memories, and (for sequential writing) the statistics of their keys.

    Attributes:
        memory: (B, K, C) memory matrices M.
        gram_pinv: (B, K, K) pseudo-inverse A^+ of the Gram matrix A = sum_i alpha_i k_i k_i^T
            of the keys written so far; None after a one-shot `write`, which `update` cannot
            continue.
        free: (B, K, K) projector I - A A^+ onto the key directions not written yet; present
            exactly when `gram_pinv` is.

    Example:
        >>> mem = EpisodicMemory(MemoryConfig(slots=8, code_size=4))
        >>> state = mem.empty(batch_size=1)
        >>> state = mem.update(state, torch.randn(1, 1, 4))
        >>> state.memory.shape
        torch.Size([1, 8, 4])
    """

    memory: Tensor
    gram_pinv: Tensor | None = None
    free: Tensor | None = None

    def __post_init__(self) -> None:
        if self.memory.dim() != 3:
            raise ValueError(f"memory must be (batch, slots, code_size); got shape {tuple(self.memory.shape)}")
        if (self.gram_pinv is None) != (self.free is None):
            raise ValueError("gram_pinv and free must be given together")
        b, k, _ = self.memory.shape
        for name in ("gram_pinv", "free"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != (b, k, k):
                raise ValueError(f"{name} must have shape {(b, k, k)}; got {tuple(t.shape)}")

    @property
    def sequential(self) -> bool:
        """Whether `EpisodicMemory.update` can continue from this state."""
        return self.gram_pinv is not None

    def _tensors(self) -> dict[str, Tensor]:
        named = {"memory": self.memory, "gram_pinv": self.gram_pinv, "free": self.free}
        return {name: t for name, t in named.items() if t is not None}

    @property
    def batch_size(self) -> int:
        """B."""
        return self.memory.shape[0]

    @property
    def slots(self) -> int:
        """K."""
        return self.memory.shape[1]

    @property
    def code_size(self) -> int:
        """C."""
        return self.memory.shape[2]

    def to(self, *args: Any, **kwargs: Any) -> MemoryState:
        """Move or cast every tensor, like `Tensor.to`."""
        return MemoryState(**{name: t.to(*args, **kwargs) for name, t in self._tensors().items()})

    def detach(self) -> MemoryState:
        """A copy cut from the autograd graph."""
        return MemoryState(**{name: t.detach() for name, t in self._tensors().items()})

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
