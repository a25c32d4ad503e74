"""The editor registry: every editing method by name, and how a run builds it.

One table, :data:`EDITORS` (name -> :class:`~larimar.eval.editor.Editor` subclass). A run
builds its editor with the class's ``from_options`` (:func:`build_editor`); code that knows
its arguments calls :func:`get_editor`. Editor modules do not import this one, so adding a
method is one class and one line here (or :func:`register_editor` from outside the package).

Example:
    >>> editor = get_editor("dummy")
    >>> build_editor("icl", EditorOptions(max_facts=8))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from larimar.eval.baselines.ft import FineTuneEditor
from larimar.eval.baselines.grace import GRACEEditor
from larimar.eval.baselines.icl import InContextEditor
from larimar.eval.baselines.rome import ROMEEditor
from larimar.eval.baselines.unedited import UneditedEditor
from larimar.eval.editor import DecoderLoader, DummyEditor, Editor, EditorOptions, Embedder
from larimar.eval.larimar_editor import LarimarEditor

__all__ = [
    "EDITORS", "DecoderLoader", "DummyEditor", "Editor", "EditorOptions", "Embedder",
    "InContextEditor", "UneditedEditor", "available_editors", "build_editor", "get_editor",
    "register_editor",
]

EDITORS: dict[str, type[Editor]] = {
    cls.name: cls
    for cls in (DummyEditor, UneditedEditor, InContextEditor, FineTuneEditor, ROMEEditor,
                GRACEEditor, LarimarEditor)
}
"""Editor name -> class (each class's ``name``)."""

E = TypeVar("E", bound=type[Editor])


def register_editor(name: str) -> Callable[[E], E]:
    """Class decorator that adds an :class:`Editor` to :data:`EDITORS` under ``name``."""

    def decorate(cls: E) -> E:
        if name in EDITORS and EDITORS[name] is not cls:
            raise ValueError(f"editor name {name!r} is already registered by {EDITORS[name]}")
        cls.name = name
        EDITORS[name] = cls
        return cls

    return decorate


def available_editors() -> list[str]:
    """Sorted names of registered editors."""
    return sorted(EDITORS)


def editor_class(name: str) -> type[Editor]:
    """The class registered as ``name``."""
    if name not in EDITORS:
        raise ValueError(f"unknown editor {name!r}; available: {', '.join(available_editors())}")
    return EDITORS[name]


def get_editor(name: str, **kwargs: Any) -> Editor:
    """Construct the editor registered as ``name`` with ``kwargs``."""
    return editor_class(name)(**kwargs)


def build_editor(name: str, options: EditorOptions) -> Editor:
    """The editor registered as ``name``, built from a run's options."""
    return editor_class(name).from_options(options)
