"""The user-facing Larimar: load a model, teach it facts in a memory, ask, score, forget.

Symbols: C code size, n candidates.

Scope (spec 5.1): the detector (`larimar.editing.scope`) decides once per query, from the query
alone (for `ask`, the user's question): the built-in model's trained detector scores the items
nearest by cosine and the query is in scope when the best probability reaches the threshold
(a model without one compares the best cosine with it). In scope, the best matching item is
recalled from its episode (`Memory.recall`: the item's write key reads the
memory) and the readout z_r = s * recall (s = `readout_scale`) conditions the decoder.
Otherwise, and without a memory, the plain decoder answers: exactly the base model.

`ask` answers questions in the decoder's chat format: in scope, the reply restarts the
sequence channel's context, so the memory states the written fact from its beginning.
`generate` and `score` continue a raw prompt (the CounterFact protocols use them).

Example:
    >>> import larimar
    >>> lm = larimar.load()
    >>> memory = lm.new_memory()
    >>> [fid] = memory.write(["The Eiffel Tower is located in Rome."])
    >>> lm.ask("Where is the Eiffel Tower?", memory=memory).text
    'The Eiffel Tower is located in Rome.'
    >>> lm.generate("The Eiffel Tower is located in", memory=memory)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..model.chat import Question, chat_prompt
from ..model.decoding import DecodeLoop, Row
from ..model.larimar import CONFIG_FILE, LarimarModel
from ..model.text import continuation_nll, decode_loop, generate, prompt_row
from .easyedit import edit as easyedit_edit
from .encoding import query_views
from .longcontext import DEFAULT_FAN_OUT, DEFAULT_KEEP, LongAnswer, SearchConfig
from .longcontext import answer as answer_from_context
from .memory import Memory
from .scope import ScopeDetector

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "pretrained"
"""Where the built-in model ships inside the package."""


@dataclass(frozen=True)
class ScopeDecision:
    """Whether a query uses the memory, and the readout that conditions the decoder if so."""

    in_scope: bool
    """True: the decoder is conditioned on `z`; False: the plain decoder answers."""
    fact_id: str | None
    """Id of the nearest written fact (None without facts)."""
    similarity: float | None
    """Cosine similarity to that fact or one of its paraphrases (None without facts)."""
    score: float | None
    """What the threshold was compared with: the trained detector's probability, or the
    cosine for a model without one (None without facts)."""
    z: Tensor | None
    """(1, C) scaled readout in the decoder's dtype when in scope, else None."""
    tokens: tuple[int, ...] | None = None
    """The decoder token ids of the recalled text when in scope and the model has a sequence
    channel (the only tokens its successor sketch can name), else None."""


@dataclass(frozen=True)
class Answer:
    """A generated answer and how the scope detector routed its query."""

    text: str
    """The reply (for `ask`) or the greedy continuation of the prompt."""
    in_scope: bool
    """Whether the memory conditioned the answer."""
    fact_id: str | None
    """Id of the nearest written fact (None without facts)."""
    similarity: float | None
    """Cosine similarity of the prompt to that fact (None without facts)."""
    score: float | None = None
    """The scope detector's score for that fact: the trained detector's probability that the
    question is about it, or the cosine for a model without one (None without facts)."""


class Larimar:
    """A Larimar model ready for editing: memories, scope detection, generation and scoring.

    Args:
        model: a trained (or untrained) `LarimarModel`; it is put in eval mode.
        scope_threshold: default threshold of the scope detector (a probability with a trained
            detector, else a cosine); None takes `model.config.scope_threshold`.
    """

    def __init__(self, model: LarimarModel, scope_threshold: float | None = None) -> None:
        self.model = model.eval()
        self.scope_threshold = _threshold(scope_threshold, model.config.scope_threshold)
        self.detector = ScopeDetector.of(model)

    @property
    def tokenizer(self) -> Any:
        """The decoder's tokenizer."""
        return self.model.tokenizer

    # ----------------------------------------------------------------------------- memories
    def new_memory(self) -> Memory:
        """An empty memory for this model."""
        return Memory(self.model)

    def load_memory(self, path: str | Path) -> Memory:
        """A memory saved with `Memory.save` (by this model)."""
        return Memory.load(self.model, path)

    # ----------------------------------------------------------------------------- queries
    def scope(self, prompt: str, memory: Memory | None = None, scope_threshold: float | None = None) -> ScopeDecision:
        """Decide from the prompt alone whether the memory answers it, and read it if so."""
        [decision] = self.scope_many([prompt], [memory], scope_threshold)
        return decision

    @torch.no_grad()
    def scope_many(self, prompts: Sequence[str], memories: Sequence[Memory | None],
                   scope_threshold: float | None = None) -> list[ScopeDecision]:
        """`scope` of each prompt with its memory (or None), their views embedded in one batch."""
        for prompt in prompts:
            _check_prompt(prompt)
        threshold = _threshold(scope_threshold, self.scope_threshold)
        views = [query_views(p) if m is not None and len(m) else [] for p, m in zip(prompts, memories, strict=True)]
        for memory, texts in zip(memories, views):
            if texts:
                self._check_owner(memory)  # type: ignore[arg-type]
        flat = [text for texts in views for text in texts]
        embedded = self.model.encoder.embed(flat) if flat else None  # (V, H)
        out, at = [], 0
        for memory, texts in zip(memories, views):
            if not texts:
                out.append(ScopeDecision(False, None, None, None, None))
                continue
            assert memory is not None and embedded is not None
            keys, coarse, live = memory.search_rows()
            match = self.detector.match(texts, embedded[at : at + len(texts)], keys, memory.item_text, live, coarse)
            at += len(texts)
            assert match is not None
            fact_id = memory.owner(match.row)
            if match.score < threshold:
                out.append(ScopeDecision(False, fact_id, match.similarity, match.score, None))
                continue
            z = self.model.config.readout_scale * memory.recall([match.row])  # (1, C) float64
            z = z.to(self.model.decoder.memory_map.weight.dtype)
            out.append(ScopeDecision(True, fact_id, match.similarity, match.score, z,
                                     self._sketch_tokens(memory.item_text(match.row))))
        return out

    def _sketch_tokens(self, text: str) -> tuple[int, ...] | None:
        """The decoder ids a text's successor sketch holds (its tokens and the end token)."""
        encoder = self.model.encoder
        if not encoder.sequence_size:
            return None
        tok = encoder.lexical_tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return tuple(sorted(set(ids) | ({tok.eos_token_id} if tok.eos_token_id is not None else set())))

    def generate(self, prompt: str, memory: Memory | None = None, max_new_tokens: int = 20,
                 scope_threshold: float | None = None) -> str:
        """Greedy continuation of `prompt`, conditioned on the memory when the query is in scope."""
        [text] = self.generate_many([prompt], memory, max_new_tokens, scope_threshold)
        return text

    def generate_many(self, prompts: Sequence[str], memory: Memory | None = None, max_new_tokens: int = 20,
                      scope_threshold: float | None = None, batch_size: int = 16) -> list[str]:
        """Greedy continuations of several prompts, each with its own scope decision, in batches.

        The same texts as `generate` on each prompt: prompts out of scope are decoded together
        by the base decoder, those in scope together with their own readouts.
        """
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings; use generate() for one prompt")
        decisions = [self.scope(p, memory, scope_threshold) for p in prompts]
        return self._decode(list(prompts), decisions, max_new_tokens, batch_size, chat=False)

    def ask(self, question: Question, memory: Memory | None = None, max_new_tokens: int = 64,
            scope_threshold: float | None = None) -> Answer:
        """Answer a question (or the last user turn of chat messages) in the decoder's chat format.

        The scope is decided from the user's question alone; in scope the memory conditions
        the reply, otherwise the reply is exactly the base chat model's.
        """
        [answer] = self.ask_many([question], memory, max_new_tokens, scope_threshold)
        return answer

    def ask_many(self, questions: Sequence[Question], memory: Memory | Sequence[Memory | None] | None = None,
                 max_new_tokens: int = 64, scope_threshold: float | None = None, batch_size: int = 16) -> list[Answer]:
        """`ask` for several questions, decoded in batches; the same replies as one by one.

        `memory` is one memory for every question, or a list with one memory (or None) per question.
        """
        if isinstance(questions, str):
            raise ValueError("questions must be a list; use ask() for one question")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
        memories = list(memory) if isinstance(memory, Sequence) else [memory] * len(questions)
        if len(memories) != len(questions):
            raise ValueError(f"got {len(memories)} memories for {len(questions)} questions; pass one per question")
        formatted = [chat_prompt(self.tokenizer, q) for q in questions]
        decisions = self.scope_many([asked for _, asked in formatted], memories, scope_threshold)
        texts = self._decode([p for p, _ in formatted], decisions, max_new_tokens, batch_size, chat=True)
        return [Answer(t.strip(), d.in_scope, d.fact_id, d.similarity, d.score) for t, d in zip(texts, decisions)]

    def reply_rows(self, questions: Sequence[Question], memories: Sequence[Memory | None], max_new_tokens: int = 64,
                   scope_threshold: float | None = None, keys: Sequence[Any] | None = None,
                   ) -> list[tuple[Row, ScopeDecision]]:
        """Questions as rows of `reply_loop()`, with their scope decisions: decoding a row there and
        passing its ids to `reply` gives `ask`'s answer (the service's continuous batching)."""
        formatted = [chat_prompt(self.tokenizer, q) for q in questions]
        decisions = self.scope_many([asked for _, asked in formatted], memories, scope_threshold)
        keys = range(len(questions)) if keys is None else keys
        return [(prompt_row(self.tokenizer, prompt, key, None if d.z is None else d.z[0], d.tokens, max_new_tokens,
                            chat=True), d) for (prompt, _), d, key in zip(formatted, decisions, keys, strict=True)]

    def reply_loop(self) -> DecodeLoop:
        """A `DecodeLoop` for chat replies (`reply_rows`); it keeps the chat template's prefix states."""
        return decode_loop(self.model.decoder, self.tokenizer, chat=True)

    def reply(self, ids: Sequence[int], decision: ScopeDecision) -> Answer:
        """The answer of a reply's generated ids."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return Answer(text.strip(), decision.in_scope, decision.fact_id, decision.similarity, decision.score)

    def _decode(self, prompts: list[str], decisions: list[ScopeDecision], max_new_tokens: int,
                batch_size: int, chat: bool) -> list[str]:
        """Greedy texts of prompts, those out of scope by the base decoder, the rest with their readouts."""
        out = [""] * len(prompts)
        for in_scope in (False, True):
            rows = [i for i, d in enumerate(decisions) if d.in_scope == in_scope]
            if not rows:
                continue
            z = torch.cat([decisions[i].z for i in rows]) if in_scope else None  # (n, C)
            texts = generate(self.model.decoder, self.tokenizer, [prompts[i] for i in rows], z=z,
                             max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat,
                             candidates=_candidates([decisions[i] for i in rows]))
            for i, text in zip(rows, texts):
                out[i] = text
        return out

    def score(self, prompt: str, candidates: Sequence[str], memory: Memory | None = None,
              scope_threshold: float | None = None) -> list[float]:
        """Mean token NLL (nats) of each candidate as a continuation of `prompt`; lower is likelier.

        The scope is decided once, from the prompt; every candidate sees the same readout.
        """
        if isinstance(candidates, str) or not candidates:
            raise ValueError("candidates must be a non-empty list of strings, e.g. ['Paris', 'Rome']")
        decision = self.scope(prompt, memory, scope_threshold)
        z = None if decision.z is None else decision.z.expand(len(candidates), -1)  # (n, C)
        recalled = _candidates([decision])
        return continuation_nll(self.model.decoder, self.tokenizer, [prompt] * len(candidates), list(candidates), z=z,
                                candidates=None if recalled is None else recalled * len(candidates))

    def answer(self, question: str, context: str | Sequence[str], fan_out: int = DEFAULT_FAN_OUT,
               keep: int = DEFAULT_KEEP, max_new_tokens: int = 20) -> LongAnswer:
        """Answer from a long context by recursive memory search; see `larimar.editing.longcontext`."""
        config = SearchConfig(fan_out=fan_out, keep=keep)
        return answer_from_context(self.model, question, context, config, max_new_tokens)

    # ----------------------------------------------------------------------------- EasyEdit
    def edit(
        self,
        prompts: str | Sequence[str],
        target_new: str | Sequence[str],
        ground_truth: str | Sequence[str] | None = None,
        rephrase_prompts: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        locality_inputs: Mapping[str, Mapping[str, Any]] | None = None,
        memory: Memory | None = None,
        scope_threshold: float | None = None,
    ) -> tuple[list[dict[str, Any]], Memory]:
        """EasyEdit-compatible editing; see `larimar.editing.easyedit.edit`."""
        return easyedit_edit(self, prompts, target_new, ground_truth, rephrase_prompts, locality_inputs, memory, scope_threshold)

    def _check_owner(self, memory: Memory) -> None:
        if memory.model is not self.model:
            raise ValueError("this memory belongs to another model; create it with this model's new_memory()")


def load(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
         scope_threshold: float | None = None, device: str | torch.device = "cpu") -> Larimar:
    """Load a saved Larimar model (a `LarimarModel.save_pretrained` folder), offline.

    Args:
        path: the model folder; None loads the built-in model shipped in the package.
        dtype: dtype of the model weights (memory math is float64 regardless).
        scope_threshold: overrides the model's default scope threshold.
        device: where the model runs ("cpu", "cuda", ...); memories follow the model.

    Raises:
        FileNotFoundError: no model at `path`, or the built-in model is not installed.
    """
    if path is None:
        if not (BUILTIN_DIR / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"the built-in Larimar model is not available yet (expected it at {BUILTIN_DIR}); "
                "pass the folder of a saved model instead: larimar.load('path/to/model')"
            )
        path = BUILTIN_DIR
    logger.info("loading Larimar model from %s", path)
    return Larimar(LarimarModel.from_pretrained(path, dtype=dtype).to(device), scope_threshold)


def _candidates(decisions: Sequence[ScopeDecision]) -> list[tuple[int, ...]] | None:
    """The recalled texts' token ids of in-scope decisions, when every one has them."""
    tokens = [d.tokens for d in decisions]
    return None if any(t is None for t in tokens) else tokens  # type: ignore[return-value]


def _threshold(value: float | None, default: float) -> float:
    if value is None:
        return default
    if not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise ValueError(f"scope_threshold is a probability or a cosine similarity, in [-1, 1]; got {value!r}")
    return float(value)


def _check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string; got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty; pass a question or the start of a sentence")
