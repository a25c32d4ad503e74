"""The editing API: teach a Larimar model facts in a memory, ask it, score answers, forget.

Example:
    >>> from larimar.editing import load
    >>> lm = load("path/to/model")
    >>> memory = lm.new_memory()
    >>> ids = memory.write(["The Eiffel Tower is located in Rome."])
    >>> lm.ask("The Eiffel Tower is located in", memory)
"""

from .larimar import Answer, Larimar, ScopeDecision, load
from .items import Fact
from .memory import Memory

__all__ = ["Answer", "Fact", "Larimar", "Memory", "ScopeDecision", "load"]
