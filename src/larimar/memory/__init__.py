"""Episodic memory core: pure PyTorch, device- and dtype-neutral, batched over B memories.

Importing this package never imports transformers.
"""

from .addressing import gaussian_keys, memory_keys, reference_keys
from .config import MemoryConfig
from .episodic import EpisodicMemory, SampledRead
from .errors import MemoryInputError
from .pinv import default_rtol, exact_pinv, iterative_pinv, pinv
from .state import MemoryState, load_metadata

__all__ = [
    "EpisodicMemory",
    "MemoryConfig",
    "MemoryInputError",
    "MemoryState",
    "SampledRead",
    "default_rtol",
    "exact_pinv",
    "gaussian_keys",
    "iterative_pinv",
    "load_metadata",
    "memory_keys",
    "pinv",
    "reference_keys",
]
