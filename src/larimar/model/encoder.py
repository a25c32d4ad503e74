"""Sentence encoder: a Hugging Face encoder, pooled, then a bias-free linear head to latents.

Shapes: B batch, T tokens, H encoder hidden size, C latent (code) size, N texts.

Example:
    >>> from larimar.model.assets import load_default_encoder
    >>> body, tokenizer = load_default_encoder()
    >>> encoder = SentenceEncoder(body, tokenizer, code_size=384)
    >>> encoder.encode(["Paris is the capital of France."]).shape
    torch.Size([1, 384])
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

Pooling = Literal["mean", "cls"]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where the mask is 1: (B, T, H), (B, T) -> (B, H)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    total = (hidden * mask).sum(dim=1)  # (B, H)
    count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return total / count


class SentenceEncoder(nn.Module):
    """Maps sentences to latent vectors z for the episodic memory.

    Args:
        encoder: any Hugging Face encoder whose output has `last_hidden_state` (B, T, H).
        tokenizer: the encoder's tokenizer.
        code_size: latent size C; defaults to the encoder's hidden size H.
        pooling: "mean" over the attention mask (sentence-transformers style) or "cls"
            (the first token's state).
        trainable: if False, the encoder body is frozen (no gradients, always in eval mode);
            the latent head stays trainable.
        max_length: tokens kept per text by `tokenize`, `encode` and `embed`.

    The head is initialised to the identity when C == H, so that untrained latents equal the
    pooled sentence embeddings; otherwise with N(0, 1/H) entries, which keeps their norm.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        code_size: int | None = None,
        pooling: Pooling = "mean",
        trainable: bool = True,
        max_length: int = 64,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls'; got {pooling!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2; got {max_length}")
        hidden_size = int(encoder.config.hidden_size)
        code_size = hidden_size if code_size is None else code_size
        if code_size < 1:
            raise ValueError(f"code_size must be positive; got {code_size}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling: Pooling = pooling
        self.max_length = max_length
        self.head = nn.Linear(hidden_size, code_size, bias=False)
        self._init_head()
        param = next(encoder.parameters(), None)
        if param is not None:
            self.head.to(device=param.device, dtype=param.dtype)
        self.trainable = trainable
        self.encoder.requires_grad_(trainable)
        if not trainable:
            self.encoder.eval()

    @property
    def hidden_size(self) -> int:
        """H, the encoder's hidden size."""
        return self.head.in_features

    @property
    def code_size(self) -> int:
        """C, the latent size."""
        return self.head.out_features

    def _init_head(self) -> None:
        with torch.no_grad():
            if self.code_size == self.hidden_size:
                nn.init.eye_(self.head.weight)
            else:
                nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(self.hidden_size))

    def train(self, mode: bool = True) -> SentenceEncoder:
        """Set training mode; a frozen encoder body stays in eval mode (no dropout)."""
        super().train(mode)
        if not self.trainable:
            self.encoder.eval()
        return self

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled sentence states, without the head: (B, T), (B, T) -> (B, H)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Latents z: (B, T), (B, T) -> (B, C)."""
        return self.head(self.pool(input_ids, attention_mask))

    def tokenize(self, texts: list[str]) -> BatchEncoding:
        """Tokenise texts, padded to the longest and cut at `max_length`, on the module's device."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return batch.to(self.head.weight.device)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Latents of texts, in eval mode and without gradients: N texts -> (N, C)."""
        return self._batched(texts, batch_size, with_head=True)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised pooled sentence embeddings, without the head: N texts -> (N, H).

        With mean pooling on all-MiniLM-L6-v2 these are the sentence-transformers embeddings,
        whose dot products are cosine similarities (used by the scope detector).
        """
        return F.normalize(self._batched(texts, batch_size, with_head=False), dim=-1)

    def _batched(self, texts: list[str], batch_size: int, with_head: bool) -> torch.Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        width = self.code_size if with_head else self.hidden_size
        weight = self.head.weight
        if len(texts) == 0:
            return weight.new_zeros(0, width)
        was_training = self.training
        self.eval()  # no dropout: the same text always gives the same vector
        try:
            chunks = []
            for start in range(0, len(texts), batch_size):
                batch = self.tokenize(texts[start : start + batch_size])
                pooled = self.pool(batch["input_ids"], batch["attention_mask"])  # (b, H)
                chunks.append(self.head(pooled) if with_head else pooled)
        finally:
            self.train(was_training)
        return torch.cat(chunks)  # (N, width)
