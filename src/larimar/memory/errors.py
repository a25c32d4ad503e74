"""Errors raised by the memory core."""


class MemoryInputError(ValueError):
    """Input that the memory cannot accept; the state passed in is left as it was."""
