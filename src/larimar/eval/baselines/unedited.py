"""``none``: the base decoder with no editing, the lower bound every method is compared with."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from larimar.eval.datasets import EditCase
from larimar.eval.editor import DecoderLoader, Editor
from larimar.eval.lm import continuation_nll, generate_greedy

logger = logging.getLogger(__name__)


def default_decoder() -> tuple[Any, Any]:
    """The project's default decoder, imported lazily (``larimar.model.assets``)."""
    from larimar.model.assets import load_default_decoder

    return load_default_decoder()


class UneditedEditor(Editor):
    """The base decoder with no editing: the lower bound every method is compared with.

    Args:
        model: a Hugging Face causal LM; loaded with ``load_decoder`` when omitted.
        tokenizer: its tokenizer (required with ``model``).
        load_decoder: callable returning ``(model, tokenizer)``; defaults to
            :func:`default_decoder`.
        batch_size: sequences per forward pass when scoring and generating.
    """

    name = "none"

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        load_decoder: DecoderLoader | None = None,
        batch_size: int = 16,
    ) -> None:
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model and tokenizer, or neither (to use load_decoder)")
        if model is None:
            model, tokenizer = (load_decoder or default_decoder)()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def edit(self, cases: Sequence[EditCase]) -> None:
        logger.debug("editor %r ignores %d edits", self.name, len(cases))

    def forget(self, case_ids: Sequence[str]) -> None:
        """Nothing is ever remembered, so forgetting is a no-op."""

    def reset(self) -> None:
        pass

    def _context(self, prompts: Sequence[str]) -> list[str]:
        """Text placed before each prompt; empty for the unedited model."""
        return ["" for _ in prompts]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        full = [c + p for c, p in zip(self._context(prompts), prompts)]
        return continuation_nll(self.model, self.tokenizer, full, continuations, self.batch_size)

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        full = [c + p for c, p in zip(self._context(prompts), prompts)]
        return generate_greedy(
            self.model, self.tokenizer, full, max_new_tokens, self.batch_size, temperature
        )

    def config(self) -> dict[str, Any]:
        model_name = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        return {"name": self.name, "model": model_name, "batch_size": self.batch_size}
