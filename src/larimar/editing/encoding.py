"""Texts -> memory latents and scope-detector embeddings, in one encoder pass.

Shapes: N texts, C code size (latent), H encoder hidden size (embedding).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.encoder import SentenceEncoder, mean_pool
from ..model.text import split_last_word

MEMORY_DTYPE = torch.float64
"""Every memory computation runs in float64, whatever the model's dtype."""


class TooLong(ValueError):
    """A text has more encoder tokens than the encoder reads (`encode_texts(strict=True)`)."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"texts[{index}] has {tokens} encoder tokens but the encoder reads at most {limit}")
        self.index, self.tokens, self.limit = index, tokens, limit


@torch.no_grad()
def encode_texts(encoder: SentenceEncoder, texts: Sequence[str], batch_size: int = 64,
                 scope_keys: bool = False, strict: bool = False) -> tuple[Tensor, Tensor]:
    """Latents and L2-normalised embeddings of texts, from one pass of the encoder body.

    Equal to `encoder.encode(texts)` and `encoder.embed(texts)`, which would run the body twice.
    With `scope_keys`, each text gets two embeddings for the scope detector: the whole text's,
    and its head's (the mean of the same pass's token states over the text minus its last
    word, e.g. "The Eiffel Tower is located in"), which is what a question about the fact
    resembles, since it lacks the answer. With `strict`, a text past the encoder's
    `max_length` raises `TooLong` (from the tokenisation the encoding uses) instead of being cut.

    Returns:
        latents (N, C) and embeddings (N, H), or (N, 2, H) with `scope_keys`; float64.
    """
    latents, embeddings = [], []
    with encoder.evaluating():
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            batch = encoder.tokenize(chunk, offsets=scope_keys, truncate=not strict)
            if strict:
                lengths = batch["attention_mask"].sum(1).tolist()
                over = [i for i, n in enumerate(lengths) if n > encoder.max_length]
                if over:
                    raise TooLong(start + over[0], int(lengths[over[0]]), encoder.max_length)
            hidden = encoder.states(batch["input_ids"], batch["attention_mask"])  # (b, T, H)
            pooled = encoder.pool_states(hidden, batch["attention_mask"])  # (b, H)
            latent = encoder.latent(pooled, batch.get("lexical_ids"), batch.get("lexical_mask"), batch.get("sequence"))
            latents.append(latent.to(MEMORY_DTYPE))  # (b, C)
            whole = F.normalize(pooled.to(MEMORY_DTYPE), dim=-1)  # (b, H)
            if scope_keys:
                head = mean_pool(hidden, head_mask(chunk, batch).to(hidden.device))
                head = F.normalize(head.to(MEMORY_DTYPE), dim=-1)
                embeddings.append(torch.stack([whole, head], dim=1))  # (b, 2, H)
            else:
                embeddings.append(whole)
    return torch.cat(latents), torch.cat(embeddings)


def head_mask(texts: Sequence[str], batch: Mapping[str, Tensor]) -> Tensor:
    """(N, T) 1 on the encoder tokens of each text's head: its first special token and the
    tokens before its last word. A one-word text keeps all its tokens (its head is itself).
    `batch` is the texts' `SentenceEncoder.tokenize(texts, offsets=True)`."""
    width = batch["input_ids"].shape[1]
    mask = torch.zeros(len(texts), width, dtype=torch.long)
    special_rows, offset_rows, attention_rows = (batch["special_tokens_mask"].tolist(),
                                                 batch["offset_mapping"].tolist(), batch["attention_mask"].tolist())
    for row, text in enumerate(texts):
        head = split_last_word(text)[0]
        special, offsets, attention = special_rows[row], offset_rows[row], attention_rows[row]
        keep = [i for i, (s, (_, stop), a) in enumerate(zip(special, offsets, attention))
                if a and ((s and i == 0) or (not s and 0 < stop <= len(head)))]
        if not head or len(keep) < 2:
            keep = [i for i, a in enumerate(attention) if a]
        mask[row, keep] = 1
    return mask


def scope_cosines(keys: Tensor, views: Tensor) -> Tensor:
    """(N, S, V): the cosine of each query view (V, H) to each key of each item (N, S, H).

    One (N * S, H) x (H, V) product on the keys as stored (no permuted copy of them)."""
    n, s, h = keys.shape
    return (keys.reshape(n * s, h) @ views.to(keys).T).reshape(n, s, -1)


def scope_similarities(keys: Tensor, views: Tensor) -> Tensor:
    """(V, N): for each query view (V, H), the best cosine to each item over its keys (N, S, H)."""
    return scope_cosines(keys, views).amax(1).T


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def query_views(prompt: str) -> list[str]:
    """The texts a query is matched with: itself and, when it holds several sentences, its
    last one (CounterFact-style paraphrases put an unrelated sentence first)."""
    parts = [p for p in SENTENCE_END.split(prompt.strip()) if p.strip()]
    return [prompt] if len(parts) < 2 else [prompt, parts[-1]]
