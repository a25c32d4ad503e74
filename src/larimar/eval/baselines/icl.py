"""``icl``: IKE-style in-context editing, the edited facts written into the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from larimar.eval.baselines.unedited import UneditedEditor
from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor, EditorOptions, Embedder, decoder_kwargs


class InContextEditor(UneditedEditor):
    """IKE-style in-context editing: edited facts are written into the prompt.

    Each query is preceded by ``"New fact: {prompt} {target_new}\\n"`` for the edited facts.
    With ``scope_threshold`` set, a scope detector decides per query (from the query alone):
    the facts are prepended only when its score for the nearest fact is >= ``scope_threshold``:
    with the default embedder, the built-in Larimar model's trained detector (a probability),
    otherwise the cosine similarity of the query's and the fact's embeddings.

    A prompt holds at most ``max_facts`` facts (the decoder's window is finite: 998 zsRE
    facts are 18,475 SmolLM2 tokens). With more facts stored, each query gets the
    ``max_facts`` most similar to it (retrieval as in IKE's demonstration selection; the most
    similar last, nearest the query) when an embedder is given, otherwise the latest ones.

    Args:
        scope_threshold: the detector's threshold (see above), or ``None`` to always prepend.
        embed: ``embed(texts) -> (N, H)`` L2-normalised embeddings; required with a threshold.
            If it also has ``keys(facts) -> (F, S, H)`` and ``views(prompt) -> (V, H)`` (as
            :func:`encoder_embedder` does), the detector is Larimar's own:
            several keys per fact, several views per query, best match over both.
        max_facts: facts per prompt at most (``None``: all of them, however long).
        **kwargs: passed to :class:`UneditedEditor`.
    """

    name = "icl"

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

    def _similarities(self, prompt: str) -> tuple[torch.Tensor, float]:
        """(F,) best cosine between the prompt's views and each fact's keys, and the score the
        scope threshold is compared with: Larimar's trained detector's probability when the
        embedder offers it (`ScopeEmbedder`), else the best cosine."""
        from larimar.editing.encoding import query_views, scope_similarities

        assert self.embed is not None
        keys_of = getattr(self.embed, "keys", None)
        views_of = getattr(self.embed, "views", None)
        facts = list(self.facts.values())
        if self._fact_emb is None:
            self._fact_emb = keys_of(facts) if keys_of else self.embed(facts)[:, None]  # (F, S, H)
        views = views_of(prompt) if views_of else self.embed([prompt])  # (V, H)
        sims = scope_similarities(self._fact_emb, views).amax(0)  # (F,)
        detector = self.embed.detector(self.tokenizer) if hasattr(self.embed, "detector") else None
        if detector is None or not detector.trained or self.scope_threshold is None:
            return sims, float(sims.max())
        match = detector.match(query_views(prompt), views, self._fact_emb, facts.__getitem__)
        assert match is not None
        return sims, match.score

    def _selection(self, prompt: str) -> list[int] | None:
        """Indices of the facts this prompt gets, in prompt order, or None when out of scope."""
        n = len(self.facts)
        if n == 0:
            return None
        fits = self.max_facts is None or n <= self.max_facts
        if self.embed is None or (self.scope_threshold is None and fits):
            return list(range(n)) if fits else list(range(n - self.max_facts, n))
        sims, score = self._similarities(prompt)
        if self.scope_threshold is not None and score < self.scope_threshold:
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

    @classmethod
    def from_options(cls, options: EditorOptions, embed: Embedder | None = None) -> Editor:
        """In-context editing; the project's encoder (or ``embed``) picks the facts a prompt gets
        when they do not all fit (and, with a scope threshold, decides the scope)."""
        return cls(scope_threshold=options.scope_threshold, embed=embed or encoder_embedder(),
                   max_facts=options.max_facts, **decoder_kwargs(options))


def encoder_embedder() -> Embedder:
    """``embed(texts) -> (N, H)`` unit sentence embeddings from the project's default encoder
    (all-MiniLM-L6-v2 through :class:`larimar.model.encoder.SentenceEncoder`), with the
    ``keys`` / ``views`` of Larimar's scope detector, so that in-context editing with a scope
    threshold decides its scope exactly as the Larimar editor does. The encoder is loaded on
    first use."""
    return ScopeEmbedder()


class ScopeEmbedder:
    """Sentence embeddings plus the scope detector's fact keys and query views.

    Args:
        encoder: a :class:`larimar.model.encoder.SentenceEncoder`; ``None`` loads the default
            one the first time it is needed.
    """

    def __init__(self, encoder: Any = None) -> None:
        self._encoder = encoder
        self._detector: Any = None

    def detector(self, tokenizer: Any) -> Any:
        """The built-in Larimar model's scope detector (`larimar.editing.scope.ScopeDetector`)
        with the decoder's tokenizer; a cosine detector when the built-in model is not installed."""
        if self._detector is None:
            import json

            from larimar.editing.larimar import BUILTIN_DIR
            from larimar.editing.scope import ScopeDetector
            from larimar.model.larimar import CONFIG_FILE
            from larimar.model.scope import ScopeConfig

            path = BUILTIN_DIR / CONFIG_FILE
            scope = json.loads(path.read_text()).get("scope") if path.is_file() else None
            self._detector = ScopeDetector(None if scope is None else ScopeConfig(**scope), tokenizer)
        return self._detector

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from larimar.model.assets import load_default_encoder
            from larimar.model.encoder import SentenceEncoder

            body, tokenizer = load_default_encoder()
            self._encoder = SentenceEncoder(body, tokenizer, trainable=False)
        return self._encoder

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder.embed(list(texts))

    def keys(self, facts: Sequence[str]) -> torch.Tensor:
        """(F, 2, H): each fact's whole-text and head embeddings."""
        from larimar.editing.encoding import encode_texts

        return encode_texts(self.encoder, list(facts), scope_keys=True)[1]

    def views(self, prompt: str) -> torch.Tensor:
        """(V, H): the prompt and, after a leading sentence, its last sentence."""
        from larimar.editing.encoding import encode_texts, query_views

        return encode_texts(self.encoder, query_views(prompt))[1]
