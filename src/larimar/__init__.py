"""Larimar: episodic memory for language models.

Teach a language model a fact with one closed-form memory write, and make it forget with the
same write at weight -1, without retraining.

Example:
    >>> import larimar
    >>> lm = larimar.load()                       # the built-in model, offline
    >>> memory = lm.new_memory()
    >>> [fact_id] = memory.write(["The Eiffel Tower is located in Rome."])
    >>> lm.generate("The Eiffel Tower is located in", memory=memory)
    >>> memory.forget(fact_id)

The editing API is imported on first use, so `import larimar.memory` stays free of transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Answer", "Fact", "Larimar", "Memory", "__version__", "load"]

if TYPE_CHECKING:
    from .editing import Answer, Fact, Larimar, Memory, load


def __getattr__(name: str) -> Any:
    """Lazily expose the editing API (PEP 562)."""
    if name in ("Answer", "Fact", "Larimar", "Memory", "load"):
        from . import editing

        return getattr(editing, name)
    raise AttributeError(f"module 'larimar' has no attribute {name!r}")
