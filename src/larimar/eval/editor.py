"""The editor protocol every editing method implements, and the options a run builds it from.

The harness only talks to :class:`Editor`; it never branches on a method's name. The editors
by name are in :mod:`larimar.eval.editors`.

Example:
    >>> editor = DummyEditor()
    >>> editor.edit([case])  # doctest: +SKIP
    >>> editor.score(["Toko Yasuda, the"], ["piano"])  # doctest: +SKIP
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from larimar.eval.datasets import EditCase

DecoderLoader = Callable[[], tuple[Any, Any]]
Embedder = Callable[[Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class EditorOptions:
    """The options of one run that editors are built from (see :meth:`Editor.from_options`)."""

    model: Path | None = None
    """Larimar: saved model folder (default built-in); other editors: a decoder HF folder."""
    scope_threshold: float | None = None
    """Scope-detector cosine threshold (larimar, icl)."""
    max_facts: int | None = 32
    """icl: facts per prompt at most; None: all."""
    write_paraphrases: bool = False
    """Larimar: also write each case's paraphrases completed with the new target."""
    stats_corpus: Path | None = None
    """ROME: sentences (corpus JSONL) for its second-moment statistics."""
    device: str = "cpu"
    """Where the editor's models run (a checked torch device name)."""


def decoder_kwargs(options: EditorOptions) -> dict[str, Any]:
    """``load_decoder`` for ``options.model`` (a decoder folder) and ``options.device``."""
    if options.model is None and options.device == "cpu":
        return {}
    from larimar.model.assets import load_decoder

    folder, device = options.model or "default", options.device

    def load() -> tuple[Any, Any]:
        model, tokenizer = load_decoder(folder)
        return model.to(device), tokenizer

    return {"load_decoder": load}


class Editor(ABC):
    """A model that can be edited, scored and sampled.

    Implementations: ``edit`` applies facts (one call may carry a batch), ``reset`` restores
    the unedited model, ``score`` returns per-pair mean token NLLs (continuations are joined
    with :func:`larimar.eval.lm.join_continuation`), ``generate`` returns greedy continuations
    (``temperature > 0``: sampled ones, from torch's global generator; an editor that cannot
    sample raises ``NotImplementedError`` and protocols that need samples report it as such).
    """

    name: str = "editor"

    @abstractmethod
    def edit(self, cases: Sequence[EditCase]) -> None:
        """Apply the edits in ``cases`` on top of the current state."""

    def forget(self, case_ids: Sequence[str]) -> None:
        """Remove earlier edits by case id."""
        raise NotImplementedError(
            f"editor {self.name!r} cannot forget individual edits; call reset() to drop all"
        )

    @abstractmethod
    def reset(self) -> None:
        """Drop every edit."""

    @abstractmethod
    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """(N,) mean token NLL of each continuation after its prompt."""

    @abstractmethod
    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        """(N,) continuations without the prompts: greedy, or sampled when ``temperature > 0``."""

    def config(self) -> dict[str, Any]:
        """Settings to save next to results."""
        return {"name": self.name}

    @classmethod
    def from_options(cls, options: EditorOptions) -> Editor:
        """The editor for a run: the decoder from ``options.model`` / ``device`` and the scope
        threshold when set; editors with other settings override this."""
        kwargs = decoder_kwargs(options)
        if options.scope_threshold is not None:
            kwargs["scope_threshold"] = options.scope_threshold
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise ValueError(f"editor {cls.name!r} does not take options {sorted(kwargs)}: {err}") from None


class DummyEditor(Editor):
    """Model-free editor for harness tests.

    Unedited scores are a deterministic function of the strings in [1, 5). After an edit,
    any prompt containing an edited subject scores that edit's ``target_new`` at 0.1 and
    generates ``" {target_new}."``; other prompts generate ``" unknown."``. Sampling
    (``temperature > 0``) returns the same texts.
    """

    name = "dummy"

    def __init__(self) -> None:
        self.edits: dict[str, EditCase] = {}

    def edit(self, cases: Sequence[EditCase]) -> None:
        self.edits.update({c.case_id: c for c in cases})

    def forget(self, case_ids: Sequence[str]) -> None:
        for cid in case_ids:
            self.edits.pop(cid, None)

    def reset(self) -> None:
        self.edits.clear()

    def _edit_for(self, prompt: str) -> EditCase | None:
        return next((c for c in self.edits.values() if c.subject and c.subject in prompt), None)

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        out = []
        for p, c in zip(prompts, continuations):
            case = self._edit_for(p)
            if case is not None and c == case.target_new:
                out.append(0.1)
            else:
                out.append(1.0 + (zlib.crc32(f"{p}\x00{c}".encode()) % 4000) / 1000)
        return out

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        out = []
        for p in prompts:
            case = self._edit_for(p)
            out.append(f" {case.target_new}." if case else " unknown.")
        return out
