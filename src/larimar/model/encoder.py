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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from .packed import pack_linears

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
        trainable: if False, the encoder body is frozen (no gradients, always in eval mode,
            its linear layers prepacked for CPU, `larimar.model.packed`, and a BERT pooler,
            which nothing reads, dropped); the latent head stays trainable.
        max_length: tokens kept per text by `tokenize`, `encode` and `embed`.
        lexicon: optional token embedding table (e.g. the decoder's input embeddings, shared,
            not copied) for a lexical channel: the last `lexical_tokens` tokens of each text
            (trailing punctuation dropped), embedded and mapped to the latent by their own
            linear head, are added to the pooled latent. It lets exact words (names, numbers)
            survive into the latent, which a mean-pooled sentence embedding blurs.
        lexical_tokenizer: the tokenizer of `lexicon`.
        lexical_tokens: how many final tokens the lexical channel reads (0: no channel).
        lexical_align: which token the channel's last slot holds: "end", the text's last token;
            "word", the first token of the text's last word (the tokens after it are dropped),
            which is the token a decoder has to produce first to say that word.
        sequence_size: width D of a sequence channel appended to the latent (0: none): the
            successor sketch of the text's tokens under `lexical_tokenizer`, end-of-text token
            included (`larimar.model.sequence`). It has no weights; the latent is then
            code_size + D wide.

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
        lexicon: nn.Embedding | None = None,
        lexical_tokenizer: PreTrainedTokenizerBase | None = None,
        lexical_tokens: int = 0,
        lexical_align: str = "end",
        sequence_size: int = 0,
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
        if lexical_align not in ("end", "word"):
            raise ValueError(f"lexical_align must be 'end' or 'word'; got {lexical_align!r}")
        self.lexical_tokens = lexical_tokens
        self.lexical_align = lexical_align
        self.lexical_head: nn.Linear | None = None
        self._lexicon: tuple[nn.Embedding, ...] = ()  # a tuple: not registered, not saved twice
        if lexical_tokens < 0:
            raise ValueError(f"lexical_tokens must be >= 0; got {lexical_tokens}")
        if lexical_tokens:
            if lexicon is None or lexical_tokenizer is None:
                raise ValueError("lexical_tokens > 0 needs a lexicon (token embeddings) and its tokenizer")
            self._lexicon = (lexicon,)
            self.lexical_tokenizer = lexical_tokenizer
            width = lexical_tokens * lexicon.embedding_dim
            self.lexical_head = nn.Linear(width, code_size, bias=False)
            nn.init.normal_(self.lexical_head.weight, std=1.0 / math.sqrt(width))
            self.lexical_head.to(device=self.head.weight.device, dtype=self.head.weight.dtype)
        if sequence_size < 0:
            raise ValueError(f"sequence_size must be >= 0; got {sequence_size}")
        if sequence_size and lexical_tokenizer is None:
            raise ValueError("sequence_size > 0 needs the decoder's tokenizer (lexical_tokenizer)")
        self.sequence_size = sequence_size
        if lexical_tokenizer is not None:
            self.lexical_tokenizer = lexical_tokenizer
        self.trainable = trainable
        self.encoder.requires_grad_(trainable)
        if not trainable:
            self.encoder.eval()
            pack_linears(self.encoder)  # the same float32 products, faster for a query's few tokens
            if isinstance(getattr(self.encoder, "pooler", None), nn.Module):
                self.encoder.pooler = None  # unused: latents pool the token states themselves

    @property
    def hidden_size(self) -> int:
        """H, the encoder's hidden size."""
        return self.head.in_features

    @property
    def code_size(self) -> int:
        """C, the width of the learned part of the latent (the head's output)."""
        return self.head.out_features

    @property
    def latent_size(self) -> int:
        """Width of a latent: C, plus D with a sequence channel."""
        return self.code_size + self.sequence_size

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
        return self.pool_states(self.states(input_ids, attention_mask), attention_mask)

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder body's last token states: (B, T), (B, T) -> (B, T, H)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pool_states(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool token states (B, T, H) into sentence states (B, H) as `pooling` says."""
        if self.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                lexical_ids: torch.Tensor | None = None, lexical_mask: torch.Tensor | None = None,
                sequence: torch.Tensor | None = None) -> torch.Tensor:
        """Latents z: (B, T), (B, T) [, (B, L), (B, L)] [, (B, D)] -> (B, latent_size)."""
        return self.latent(self.pool(input_ids, attention_mask), lexical_ids, lexical_mask, sequence)

    def latent(self, pooled: torch.Tensor, lexical_ids: torch.Tensor | None = None,
               lexical_mask: torch.Tensor | None = None, sequence: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, latent_size) from pooled states (B, H), with a lexical channel its token
        ids (B, L) and mask, and with a sequence channel the texts' sketches (B, D) (see
        `tokenize`, which returns all of them)."""
        z = self.head(pooled.to(self.head.weight.dtype))
        if self.lexical_head is not None:
            if lexical_ids is None or lexical_mask is None:
                raise ValueError("this encoder has a lexical channel: pass lexical_ids and lexical_mask (see tokenize)")
            embeds = self._lexicon[0](lexical_ids.to(self.head.weight.device))  # (B, L, D)
            embeds = embeds * lexical_mask.to(embeds)[..., None]
            z = z + self.lexical_head(embeds.flatten(1).to(self.head.weight.dtype))
        if self.sequence_size:
            if sequence is None:
                raise ValueError("this encoder has a sequence channel: pass sequence (see tokenize or sequence())")
            if tuple(sequence.shape) != (z.shape[0], self.sequence_size):
                raise ValueError(f"sequence must have shape ({z.shape[0]}, {self.sequence_size}); "
                                 f"got {tuple(sequence.shape)}")
            z = torch.cat([z, sequence.to(z)], -1)
        return z

    def sequence(self, texts: list[str]) -> torch.Tensor:
        """Successor sketches (N, D) of texts' decoder tokens, end-of-text token included."""
        from .sequence import successor_sketch

        if not self.sequence_size:
            raise ValueError("this encoder has no sequence channel (sequence_size = 0)")
        tok = self.lexical_tokenizer
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        ids = [tok(t, add_special_tokens=False)["input_ids"] + eos for t in texts]
        return successor_sketch(ids, self.sequence_size)

    def lexical(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The lexical channel's inputs: the last L tokens of each text, right-aligned.

        Trailing punctuation and spaces are dropped first, so "... in Rome." ends in " Rome".
        With `lexical_align="word"` the tokens after the first token of the last word are
        dropped too, so "... by Dodge" (" D", "odge") ends in " D".
        Returns ids (N, L) (slot L-1 holds the last token kept) and a 0/1 mask (N, L).
        """
        n, width = len(texts), self.lexical_tokens
        ids = torch.zeros(n, width, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        for row, text in enumerate(texts):
            end = len(text)
            while end > 0 and not text[end - 1].isalnum():
                end -= 1
            tokens = self._lexical_tokens(text[:end])[-width:]
            if tokens:
                ids[row, width - len(tokens) :] = torch.tensor(tokens)
                mask[row, width - len(tokens) :] = 1
        return ids, mask

    def _lexical_tokens(self, text: str) -> list[int]:
        """Token ids of a text (trailing punctuation already dropped), cut as `lexical_align` says."""
        if self.lexical_align == "end" or not text:
            return self.lexical_tokenizer(text, add_special_tokens=False)["input_ids"]
        start = text.rfind(" ") + 1  # first character of the last word
        enc = self.lexical_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        tokens, offsets = enc["input_ids"], enc["offset_mapping"]
        for i, (_, stop) in enumerate(offsets):
            if stop > start:  # the first token that reaches into the last word
                return tokens[: i + 1]
        return tokens

    def tokenize(self, texts: list[str], offsets: bool = False, channels: bool = True,
                 truncate: bool = True) -> BatchEncoding:
        """Tokenise texts, padded to the longest and cut at `max_length` (unless not `truncate`:
        the caller checks the lengths), on the module's device.
        With `offsets`, the batch also holds each token's character span ("offset_mapping") and
        "special_tokens_mask", for the caller (the encoder body takes neither). Without
        `channels`, the lexical and sequence channels' inputs are left out (for pooled states
        alone, e.g. `embed`)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=truncate,
            max_length=self.max_length if truncate else None,
            return_tensors="pt",
            return_offsets_mapping=offsets,
            return_special_tokens_mask=offsets,
        )
        if self.lexical_head is not None and channels:
            batch["lexical_ids"], batch["lexical_mask"] = self.lexical(list(texts))
        if self.sequence_size and channels:
            batch["sequence"] = self.sequence(list(texts))
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
        width = self.latent_size if with_head else self.hidden_size
        weight = self.head.weight
        if len(texts) == 0:
            return weight.new_zeros(0, width)
        with self.evaluating():  # no dropout: the same text always gives the same vector
            chunks = []
            for start in range(0, len(texts), batch_size):
                batch = self.tokenize(texts[start : start + batch_size], channels=with_head)
                pooled = self.pool(batch["input_ids"], batch["attention_mask"])  # (b, H)
                chunks.append(self.latent(pooled, batch.get("lexical_ids"), batch.get("lexical_mask"),
                                          batch.get("sequence")) if with_head else pooled)
        return torch.cat(chunks)  # (N, width)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode inside the block, the previous mode after it (switching modes walks every
        submodule, a sizeable part of encoding one sentence, so an encoder already in eval
        mode is left alone)."""
        mode = self.training
        switch = mode or self.encoder.training
        if switch:
            self.eval()
        try:
            yield
        finally:
            if switch:
                self.train(mode)
