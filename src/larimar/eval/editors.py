"""The editor protocol every editing method implements, and a registry of them by name.

The harness only talks to :class:`Editor`; it never branches on a method's name.

Example:
    >>> editor = get_editor("dummy")
    >>> editor.edit([case])  # doctest: +SKIP
    >>> editor.score(["Toko Yasuda, the"], ["piano"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from larimar.eval.datasets import EditCase
from larimar.eval.lm import continuation_nll, generate_greedy

logger = logging.getLogger(__name__)

DecoderLoader = Callable[[], tuple[Any, Any]]
Embedder = Callable[[Sequence[str]], torch.Tensor]


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


_REGISTRY: dict[str, type[Editor]] = {}
E = TypeVar("E", bound=type[Editor])


def register_editor(name: str) -> Callable[[E], E]:
    """Class decorator that registers an :class:`Editor` under ``name``."""

    def decorate(cls: E) -> E:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"editor name {name!r} is already registered by {_REGISTRY[name]}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_editors() -> list[str]:
    """Sorted names of registered editors."""
    return sorted(_REGISTRY)


def get_editor(name: str, **kwargs: Any) -> Editor:
    """Construct the editor registered as ``name`` with ``kwargs``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown editor {name!r}; available: {', '.join(available_editors())}")
    return _REGISTRY[name](**kwargs)


@register_editor("dummy")
class DummyEditor(Editor):
    """Model-free editor for harness tests.

    Unedited scores are a deterministic function of the strings in [1, 5). After an edit,
    any prompt containing an edited subject scores that edit's ``target_new`` at 0.1 and
    generates ``" {target_new}."``; other prompts generate ``" unknown."``. Sampling
    (``temperature > 0``) returns the same texts.
    """

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


def default_decoder() -> tuple[Any, Any]:
    """The project's default decoder, imported lazily (``larimar.model.assets``)."""
    from larimar.model.assets import load_default_decoder

    return load_default_decoder()


@register_editor("none")
class UneditedEditor(Editor):
    """The base decoder with no editing: the lower bound every method is compared with.

    Args:
        model: a Hugging Face causal LM; loaded with ``load_decoder`` when omitted.
        tokenizer: its tokenizer (required with ``model``).
        load_decoder: callable returning ``(model, tokenizer)``; defaults to
            :func:`default_decoder`.
        batch_size: sequences per forward pass when scoring and generating.
    """

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


@register_editor("icl")
class InContextEditor(UneditedEditor):
    """IKE-style in-context editing: edited facts are written into the prompt.

    Each query is preceded by ``"New fact: {prompt} {target_new}\\n"`` for the edited facts.
    With ``scope_threshold`` set, a scope detector decides per query (from the query alone):
    the facts are prepended only when the cosine similarity between the query's embedding and
    its nearest fact's embedding is >= ``scope_threshold``.

    A prompt holds at most ``max_facts`` facts (the decoder's window is finite: 998 zsRE
    facts are 18,475 SmolLM2 tokens). With more facts stored, each query gets the
    ``max_facts`` most similar to it (retrieval as in IKE's demonstration selection; the most
    similar last, nearest the query) when an embedder is given, otherwise the latest ones.

    Args:
        scope_threshold: cosine-similarity threshold, or ``None`` to always prepend.
        embed: ``embed(texts) -> (N, H)`` L2-normalised embeddings; required with a threshold.
            If it also has ``keys(facts) -> (F, S, H)`` and ``views(prompt) -> (V, H)`` (as
            :func:`larimar.eval.runner.encoder_embedder` does), the detector is Larimar's own:
            several keys per fact, several views per query, best match over both.
        max_facts: facts per prompt at most (``None``: all of them, however long).
        **kwargs: passed to :class:`UneditedEditor`.
    """

    def __init__(
        self,
        scope_threshold: float | None = None,
        embed: Embedder | None = None,
        max_facts: int | None = 32,
        **kwargs: Any,
    ) -> None:
        if scope_threshold is not None and embed is None:
            raise ValueError(
                "scope_threshold needs an embed(texts) -> (N, H) callable, e.g. "
                "larimar.model.encoder.SentenceEncoder(...).embed"
            )
        if max_facts is not None and (not isinstance(max_facts, int) or max_facts < 1):
            raise ValueError(f"max_facts must be a positive integer or None; got {max_facts!r}")
        super().__init__(**kwargs)
        self.scope_threshold = scope_threshold
        self.embed = embed
        self.max_facts = max_facts
        self.facts: dict[str, str] = {}
        self._fact_emb: torch.Tensor | None = None  # (F, S, H)

    def edit(self, cases: Sequence[EditCase]) -> None:
        for c in cases:
            self.facts.pop(c.case_id, None)  # a rewritten case moves to the end (the latest)
            self.facts[c.case_id] = c.fact
        self._fact_emb = None

    def forget(self, case_ids: Sequence[str]) -> None:
        for cid in case_ids:
            self.facts.pop(cid, None)
        self._fact_emb = None

    def reset(self) -> None:
        self.facts.clear()
        self._fact_emb = None

    def _similarities(self, prompt: str) -> torch.Tensor:
        """(F,) best cosine between the prompt's views and each fact's keys."""
        from larimar.editing.encoding import scope_similarities

        assert self.embed is not None
        keys_of = getattr(self.embed, "keys", None)
        views_of = getattr(self.embed, "views", None)
        if self._fact_emb is None:
            facts = list(self.facts.values())
            self._fact_emb = keys_of(facts) if keys_of else self.embed(facts)[:, None]  # (F, S, H)
        views = views_of(prompt) if views_of else self.embed([prompt])  # (V, H)
        return scope_similarities(self._fact_emb, views).amax(0)  # (F,)

    def _selection(self, prompt: str) -> list[int] | None:
        """Indices of the facts this prompt gets, in prompt order, or None when out of scope."""
        n = len(self.facts)
        if n == 0:
            return None
        fits = self.max_facts is None or n <= self.max_facts
        if self.embed is None or (self.scope_threshold is None and fits):
            return list(range(n)) if fits else list(range(n - self.max_facts, n))
        sims = self._similarities(prompt)
        if self.scope_threshold is not None and float(sims.max()) < self.scope_threshold:
            return None
        if fits:
            return list(range(n))
        top = sims.topk(self.max_facts).indices  # most similar first
        return [int(i) for i in top.flip(0)]

    def in_scope(self, prompts: Sequence[str]) -> list[bool]:
        """Whether each query gets facts (all True without a scope detector, once any exist)."""
        return [self._selection(p) is not None for p in prompts]

    def _context(self, prompts: Sequence[str]) -> list[str]:
        facts = list(self.facts.values())
        out = []
        for prompt in prompts:
            chosen = self._selection(prompt)
            out.append("" if chosen is None else "".join(f"New fact: {facts[i]}\n" for i in chosen))
        return out

    def config(self) -> dict[str, Any]:
        return {**super().config(), "scope_threshold": self.scope_threshold, "max_facts": self.max_facts}


from larimar.eval import baselines  # noqa: E402,F401  (registers ft, rome, grace)
from larimar.eval import larimar_editor  # noqa: E402,F401  (registers larimar)
