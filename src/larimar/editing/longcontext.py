"""Long input context through recursive memory search (spec 5.4).

Symbols: n sentences (chunks) of the context, C code size, K slots, F fan-out (items written
per memory), G = ceil(n_l / F) memories at level l, k = `keep` readouts passed up per memory.

    level 0:  the n sentence latents, in order, are cut into G chunks of F items (the last one
              shorter, zero-padded); each chunk is written into its own memory with the one-shot
              write, batched over the G memories.
    read:     each memory is read with the question's latent q; every written item is read
              back too, and the k item readouts that best match the question's readout are
              kept ("similarity": cosine to the question's readout; "weight": the question
              readout's least-squares weight on the item readout).
    repeat:   the G * k kept readouts are the items of the next level, until at most F remain.
    top:      they are written as one episode into a last memory, read with q, and the decoder
              generates from the question conditioned on that readout ("query"), on the
              best item readout ("best"), or on the readout of a fresh episode that holds
              only the sentence ranked first ("episode").

With k = 1 there are exactly max(1, ceil(log_F n)) levels. With k < F every level strictly
shrinks, so the search always terminates. Each level carries the index of the sentence each
kept readout came from, so the trace names the sentence the search ranked first.

Example:
    >>> lm = larimar.load()
    >>> lm.answer("Toko Yasuda, the", "Toko Yasuda, the piano. Paris is in Italy. ...").text
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..memory import EpisodicMemory, pinv
from ..model.larimar import LarimarModel
from ..model.text import generate
from .encoding import MEMORY_DTYPE, encode_texts

Score = Literal["similarity", "weight"]
Readout = Literal["query", "best", "episode"]

DEFAULT_FAN_OUT = 16
"""Items per memory; chosen by measurement (retrieval, readout fidelity and time; see the report)."""
DEFAULT_KEEP = 1
"""Readouts kept per memory; chosen by measurement."""
MAX_WORDS = 40
"""Sentences longer than this are cut into windows of this many words."""
MEMORIES_PER_CALL = 32
"""Memories written and read in one batched call (bounds RAM: each is K x C float64)."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+|\n+")


@dataclass(frozen=True)
class SearchConfig:
    """How the context is cut into memories and what each memory passes up."""

    fan_out: int = DEFAULT_FAN_OUT
    """F: items written per memory (>= 2)."""
    keep: int = DEFAULT_KEEP
    """k: readouts kept per memory and written into the next level (1 <= k < F)."""
    score: Score = "similarity"
    """How a memory ranks its item readouts against the question's readout."""
    readout: Readout = "query"
    """What conditions the decoder: the top memory's readout of the question ("query"), its best
    item readout ("best"), or the readout of a fresh one-sentence episode holding the sentence
    the search ranked first, read with the question ("episode")."""

    def __post_init__(self) -> None:
        if not isinstance(self.fan_out, int) or self.fan_out < 2:
            raise ValueError(f"fan_out must be an integer >= 2 (items per memory); got {self.fan_out!r}")
        if not isinstance(self.keep, int) or not 1 <= self.keep < self.fan_out:
            raise ValueError(f"keep must be an integer in [1, fan_out - 1] = [1, {self.fan_out - 1}]; got {self.keep!r}")
        if self.score not in ("similarity", "weight"):
            raise ValueError(f"score must be 'similarity' or 'weight'; got {self.score!r}")
        if self.readout not in ("query", "best", "episode"):
            raise ValueError(f"readout must be 'query', 'best' or 'episode'; got {self.readout!r}")


@dataclass(frozen=True)
class Level:
    """One level of the search."""

    items: int
    """Latents written at this level."""
    memories: int
    """Memories they were written into (G)."""
    kept: int
    """Readouts passed up to the next level (1 at the top)."""
    best: int
    """Index of the context sentence behind this level's best-scoring readout."""
    best_score: float
    """Its score."""


@dataclass(frozen=True)
class SearchResult:
    """The outcome of a recursive search over latents."""

    z: Tensor
    """(C,) the final readout (unscaled), in the latents' dtype."""
    best: int
    """Index of the sentence whose readout ranked first at the top level."""
    levels: tuple[Level, ...]
    """The trace, level 0 first."""


@dataclass(frozen=True)
class LongAnswer:
    """An answer generated from a long context, with the search trace."""

    text: str
    """The greedy continuation of the question."""
    chunks: tuple[str, ...]
    """The context as written: one sentence (or chunk) per item."""
    best_chunk: str
    """The sentence the search ranked first at the top level."""
    levels: tuple[Level, ...]
    """Per level: items, memories, readouts kept, best sentence and its score."""
    seconds: float
    """Wall time of the whole call."""


# --------------------------------------------------------------------------------- splitting
def split_context(context: str | Sequence[str], max_words: int = MAX_WORDS) -> list[str]:
    """The context as a list of chunks: sentences of a text, or the given list's items.

    A string is split after ``. ! ?`` followed by whitespace and at newlines; a list is taken
    as already chunked. Chunks longer than `max_words` words are cut into windows of that size.

    Raises:
        ValueError: the context is not text, or holds no non-empty chunk.
    """
    if isinstance(context, str):
        pieces = _SENTENCE_END.split(context)
    elif isinstance(context, Sequence) and all(isinstance(c, str) for c in context):
        pieces = list(context)
    else:
        raise ValueError("context must be a string or a list of strings (sentences or chunks)")
    chunks: list[str] = []
    for piece in pieces:
        words = piece.split()
        chunks += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    if not chunks:
        raise ValueError("context is empty; pass the text (or sentences) to answer from")
    return chunks


def chunk(items: Tensor, fan_out: int) -> tuple[Tensor, Tensor]:
    """Cut items into consecutive chunks of `fan_out`, the last one zero-padded.

    Args:
        items: (n, C) latents.

    Returns:
        (G, F, C) chunks and a (G, F) mask, True on real items; G = ceil(n / F).
    """
    n, c = items.shape
    g = math.ceil(n / fan_out)
    padded = items.new_zeros(g * fan_out, c)
    padded[:n] = items
    mask = torch.zeros(g * fan_out, dtype=torch.bool, device=items.device)
    mask[:n] = True
    return padded.view(g, fan_out, c), mask.view(g, fan_out)


def levels_needed(n: int, fan_out: int) -> int:
    """Levels of the search with keep = 1: the smallest L >= 1 with fan_out ** L >= n."""
    levels = 1
    while fan_out**levels < n:
        levels += 1
    return levels


# --------------------------------------------------------------------------------- search
@torch.no_grad()
def read_chunks(memory: EpisodicMemory, chunks: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Write each chunk into its own memory and read it with the query and with every item.

    Args:
        chunks: (G, F, C) items (zero rows are padding).
        query: (C,) the question's latent.

    Returns:
        question readouts (G, C) and item readouts (G, F, C).
    """
    q_out, item_out = [], []
    for start in range(0, chunks.shape[0], MEMORIES_PER_CALL):
        z = chunks[start : start + MEMORIES_PER_CALL]  # (b, F, C)
        state = memory.write(z)
        queries = torch.cat([query.expand(z.shape[0], 1, -1), z], dim=1)  # (b, 1 + F, C)
        out = memory.read(state, queries)  # (b, 1 + F, C)
        q_out.append(out[:, 0])
        item_out.append(out[:, 1:])
    return torch.cat(q_out), torch.cat(item_out)


def score_items(q_read: Tensor, item_read: Tensor, mask: Tensor, score: Score, memory: EpisodicMemory) -> Tensor:
    """How well each item readout matches its memory's readout of the question.

    Args:
        q_read: (G, C) question readouts.
        item_read: (G, F, C) item readouts.
        mask: (G, F) True on real items; padding scores -inf.
        score: "similarity" (cosine) or "weight" (coefficient of q_read on the item readouts,
            times the item's norm, so that it does not depend on the item's scale).

    Returns:
        (G, F) scores.
    """
    if score == "similarity":
        s = F.cosine_similarity(item_read, q_read[:, None], dim=-1)  # (G, F)
    else:
        cfg = memory.config
        coef = q_read[:, None] @ pinv(item_read, cfg.pinv, cfg.pinv_steps, cfg.pinv_rtol)  # (G, 1, F)
        s = coef[:, 0] * item_read.norm(dim=-1) / q_read.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return s.masked_fill(~mask, float("-inf"))


@torch.no_grad()
def search_level(
    memory: EpisodicMemory, items: Tensor, origin: Tensor, query: Tensor, config: SearchConfig
) -> tuple[Tensor, Tensor, Level]:
    """One level: write the items in chunks, read with the query, keep the best per chunk.

    Args:
        items: (n, C) latents; origin: (n,) sentence index behind each.
        query: (C,) the question's latent.

    Returns:
        kept readouts (m, C), their origins (m,), and the level's trace; m < n when n > F.
    """
    chunks, mask = chunk(items, config.fan_out)  # (G, F, C), (G, F)
    q_read, item_read = read_chunks(memory, chunks, query)
    scores = score_items(q_read, item_read, mask, config.score, memory)  # (G, F)
    k = min(config.keep, config.fan_out)
    top = scores.topk(k, dim=-1)  # (G, k)
    valid = torch.isfinite(top.values).flatten()  # a short last chunk may have fewer than k
    flat = (top.indices + torch.arange(chunks.shape[0], device=items.device)[:, None] * config.fan_out).flatten()
    kept_idx = flat[valid]  # (m,)
    padded_origin = torch.full((mask.numel(),), -1, dtype=torch.long, device=items.device)
    padded_origin[: origin.numel()] = origin
    best = int(scores.flatten().argmax())
    level = Level(items.shape[0], chunks.shape[0], int(valid.sum()), int(padded_origin[best]),
                  float(scores.flatten()[best]))
    return item_read.reshape(-1, items.shape[1])[kept_idx], padded_origin[kept_idx], level


@torch.no_grad()
def top_level(memory: EpisodicMemory, items: Tensor, origin: Tensor, query: Tensor,
              config: SearchConfig) -> tuple[Tensor, Level]:
    """The last memory (at most F items): its readout of the query, or its best item readout."""
    chunks, mask = chunk(items, items.shape[0])  # (1, n, C)
    q_read, item_read = read_chunks(memory, chunks, query)
    scores = score_items(q_read, item_read, mask, config.score, memory)[0]  # (n,)
    best = int(scores.argmax())
    z = q_read[0] if config.readout == "query" else item_read[0, best]
    return z, Level(items.shape[0], 1, 1, int(origin[best]), float(scores[best]))


@torch.no_grad()
def recursive_search(memory: EpisodicMemory, latents: Tensor, query: Tensor,
                     config: SearchConfig | None = None) -> SearchResult:
    """Search n latents for the question recursively, ending with one memory's readout.

    Args:
        memory: the episodic memory module (its prior and pseudo-inverse settings).
        latents: (n, C) context latents.
        query: (C,) the question's latent.

    Returns:
        The final readout (C,), the sentence ranked first, and the per-level trace.
    """
    config = config or SearchConfig()
    if latents.dim() != 2 or latents.shape[0] == 0:
        raise ValueError(f"latents must be a non-empty (n, code_size) tensor; got shape {tuple(latents.shape)}")
    items, origin = latents, torch.arange(latents.shape[0], device=latents.device)
    levels: list[Level] = []
    while items.shape[0] > config.fan_out:
        items, origin, level = search_level(memory, items, origin, query, config)
        levels.append(level)
    z, level = top_level(memory, items, origin, query, config)
    levels.append(level)
    if config.readout == "episode":  # the winner alone in a fresh memory, read with the question
        z = flat_read(memory, latents[level.best : level.best + 1], query)
    return SearchResult(z, level.best, tuple(levels))


@torch.no_grad()
def flat_read(memory: EpisodicMemory, latents: Tensor, query: Tensor) -> Tensor:
    """One memory holding all n latents, read once with the query: (n, C), (C,) -> (C,)."""
    state = memory.write(latents[None])
    return memory.read(state, query[None, None])[0, 0]


# --------------------------------------------------------------------------------- answering
def encode_context(model: LarimarModel, question: str, chunks: Sequence[str]) -> tuple[Tensor, Tensor]:
    """float64 latents of the chunks (n, C) and of the question (C,), in one encoder pass."""
    latents, _ = encode_texts(model.encoder, [question, *chunks])  # (1 + n, C)
    return latents[1:].to(MEMORY_DTYPE), latents[0].to(MEMORY_DTYPE)


def decode(model: LarimarModel, question: str, z: Tensor, max_new_tokens: int) -> str:
    """Greedy continuation of the question conditioned on `readout_scale * z` (C,)."""
    z = (model.config.readout_scale * z).to(model.decoder.memory_map.weight.dtype)[None]  # (1, C)
    return generate(model.decoder, model.tokenizer, [question], z=z, max_new_tokens=max_new_tokens)[0]


@torch.no_grad()
def answer(model: LarimarModel, question: str, context: str | Sequence[str], config: SearchConfig | None = None,
           max_new_tokens: int = 20) -> LongAnswer:
    """Answer `question` from `context` by recursive memory search; see the module docstring.

    Raises:
        ValueError: the question or the context is empty, or the config is invalid.
    """
    start = time.perf_counter()
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question is empty; pass a question or the start of a sentence")
    config = config or SearchConfig()
    chunks = split_context(context)
    latents, query = encode_context(model, question, chunks)
    result = recursive_search(model.memory, latents, query, config)
    text = decode(model, question, result.z, max_new_tokens)
    return LongAnswer(text, tuple(chunks), chunks[result.best], result.levels, time.perf_counter() - start)
