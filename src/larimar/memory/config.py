"""Configuration of the episodic memory."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

PinvMethod = Literal["exact", "iterative"]
Addressing = Literal["reference", "gaussian"]

_PINV_METHODS = ("exact", "iterative")
_ADDRESSING = ("reference", "gaussian")


@dataclass
class MemoryConfig:
    """Shape and numerics of an episodic memory of K slots by C code dimensions."""

    slots: int = 512
    """K: number of memory rows (slots)."""
    code_size: int = 384
    """C: width of a latent (and of a memory row)."""
    pinv: PinvMethod = "exact"
    """Pseudo-inverse used by write and read: "exact" (SVD) or "iterative" (Ben-Israel-Cohen)."""
    pinv_steps: int = 15
    """Number of Ben-Israel-Cohen steps when `pinv="iterative"`."""
    pinv_rtol: float | None = None
    """Exact pinv: singular values below rtol * sigma_max count as zero; None: sqrt(eps) of the dtype."""
    observation_noise: float = 0.0
    """Std of the Gaussian noise added to written latents while the module is training."""
    addressing: Addressing = "reference"
    """How write/update derive keys: "reference" (z @ pinv(M0)) or "gaussian" (kernel on M0 rows)."""
    gaussian_width: float = 1e-3
    """The factor a of Gaussian-convolution keys; small values give nearly one-hot keys."""
    rls_tol: float | None = None
    """Sequential writes: relative tolerance for "new key direction" and "last support removed";
    None: sqrt(eps) of the dtype."""
    read_std_init: float = 0.1
    """Initial standard deviation of the sampled reading weights (one learned value per slot)."""
    learn_prior: bool = True
    """Whether the prior memory M0 is a trainable parameter."""
    key_size: int | None = None
    """Only the first key_size coordinates of a latent address the memory (write keys and
    reading weights); the rest are values that are stored and read back but never looked up
    by. None: all C coordinates address."""

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1; got {self.slots}")
        if self.code_size < 1:
            raise ValueError(f"code_size must be >= 1; got {self.code_size}")
        if self.pinv not in _PINV_METHODS:
            raise ValueError(f"pinv must be one of {_PINV_METHODS}; got {self.pinv!r}")
        if self.addressing not in _ADDRESSING:
            raise ValueError(f"addressing must be one of {_ADDRESSING}; got {self.addressing!r}")
        if self.pinv_steps < 1:
            raise ValueError(f"pinv_steps must be >= 1; got {self.pinv_steps}")
        if self.pinv_rtol is not None and not 0.0 <= self.pinv_rtol < 1.0:
            raise ValueError(f"pinv_rtol must be in [0, 1); got {self.pinv_rtol}")
        if self.observation_noise < 0:
            raise ValueError(f"observation_noise must be >= 0; got {self.observation_noise}")
        if self.gaussian_width <= 0:
            raise ValueError(f"gaussian_width must be > 0; got {self.gaussian_width}")
        if self.rls_tol is not None and not 0.0 < self.rls_tol < 1.0:
            raise ValueError(f"rls_tol must be in (0, 1); got {self.rls_tol}")
        if self.key_size is not None and not 1 <= self.key_size <= self.code_size:
            raise ValueError(f"key_size must be in [1, code_size={self.code_size}] or None; got {self.key_size}")
        if self.read_std_init <= 0:
            raise ValueError(f"read_std_init must be > 0; got {self.read_std_init}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view, for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryConfig:
        """Inverse of `to_dict`; unknown keys are an error that names them."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown memory config keys: {sorted(unknown)}")
        return cls(**data)
