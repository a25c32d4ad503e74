"""Scoring and greedy generation of text with a memory-conditioned decoder.

Shapes: N prompts, B a batch of them, T tokens, V vocabulary, C code size.

Conventions (the same as `larimar.eval.lm`, which scores plain Hugging Face models):

* A continuation is joined to its prompt with one space unless either side already supplies
  the whitespace (:func:`join_continuation`): ``"piano"`` is scored as ``" piano"``.
* Prompt and prompt+continuation are tokenised as whole strings; the scored tokens are those
  after their longest common token prefix, so merges across the boundary are handled and no
  BOS token is assumed. The first token of a text has no context and is never scored.
* With ``z=None`` every call is exactly the base decoder's.

Example:
    >>> continuation_nll(decoder, tokenizer, ["Paris is the capital of"], ["France"])  # [nll]
    >>> generate(decoder, tokenizer, ["The Eiffel Tower is in"], z=z_r)  # z_r (1, C)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .chat import template_prefix
from .conditioning import MemoryConditionedDecoder
from .decoding import DecodeLoop, Row, supports
from .sequence import candidate_ids


def join_continuation(prompt: str, continuation: str) -> str:
    """``prompt + " " + continuation`` unless either side already supplies the whitespace."""
    if not prompt or not continuation or prompt[-1].isspace() or continuation[0].isspace():
        return prompt + continuation
    return f"{prompt} {continuation}"


def split_last_word(sentence: str) -> tuple[str, str, str]:
    """(head, last word, trailing punctuation): "It is red." -> ("It is", "red", ".")."""
    stripped = sentence.rstrip()
    end = len(stripped)
    while end > 0 and not stripped[end - 1].isalnum():
        end -= 1
    start = stripped.rfind(" ", 0, end) + 1
    return stripped[:start].rstrip(), stripped[start:end], stripped[end:]


def _ids(tokenizer: Any, text: str, special_tokens: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id, else 0."""
    for pid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pid is not None:
            return int(pid)
    return 0


def encode_pairs(
    tokenizer: Any, prompts: Sequence[str], continuations: Sequence[str]
) -> list[tuple[list[int], int]]:
    """Token ids of each ``prompt + continuation`` and the index of its first scored token.

    Raises:
        ValueError: lengths differ, or a continuation adds no token to its prompt.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    pairs = []
    for prompt, cont in zip(prompts, continuations):
        full = _ids(tokenizer, join_continuation(prompt, cont))
        start = max(1, _common_prefix(_ids(tokenizer, prompt), full))
        if start >= len(full):
            raise ValueError(f"continuation {cont!r} adds no scorable token to prompt {prompt!r}")
        pairs.append((full, start))
    return pairs


def _check_z(z: Tensor | None, n: int) -> None:
    if z is not None and (z.dim() != 2 or z.shape[0] != n):
        raise ValueError(f"z must have one row per prompt, shape ({n}, code_size); got {tuple(z.shape)}")


def _device(decoder: MemoryConditionedDecoder) -> torch.device:
    return next(decoder.parameters()).device


def _right_padded(rows: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """input_ids and attention mask (B, T), real tokens first."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, device=device)
        mask[i, : len(ids)] = 1
    return input_ids, mask


def _left_padded(rows: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """input_ids and attention mask (B, T), real tokens last (for generation)."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.tensor(ids, device=device)
        mask[i, width - len(ids) :] = 1
    return input_ids, mask


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced scores of one continuation's L tokens."""

    targets: Tensor
    """(L,) the continuation's token ids."""
    log_probs: Tensor
    """(L,) log-probability of each target token given everything before it."""
    predicted: Tensor
    """(L,) the argmax token id at each of those positions."""

    @property
    def accuracy(self) -> float:
        """Share of positions whose argmax is the target token (EasyEdit's token accuracy)."""
        return (self.predicted == self.targets).double().mean().item()


@torch.no_grad()
def score_tokens(
    decoder: MemoryConditionedDecoder,
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: Sequence[str],
    z: Tensor | None = None,
    batch_size: int = 16,
    candidates: Sequence[Sequence[int]] | None = None,
) -> list[TokenScores]:
    """Teacher-forced scores of each continuation after its prompt.

    Sequences are right-padded and masked, so results do not depend on batch composition.

    Args:
        decoder: the conditioned decoder.
        tokenizer: its tokenizer.
        prompts: (N,) prompt texts.
        continuations: (N,) continuation texts, see :func:`join_continuation`.
        z: (N, C) one readout per prompt, or None for the base decoder.
        batch_size: sequences per forward pass.
        candidates: (N,) token ids of the text each readout recalls (see
            `MemoryConditionedDecoder.forward`), or None.

    Returns:
        (N,) scores over each continuation's tokens.
    """
    _check_z(z, len(prompts))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    pairs = encode_pairs(tokenizer, prompts, continuations)
    device, pad = _device(decoder), pad_id(tokenizer)
    out: list[TokenScores] = []
    for b in range(0, len(pairs), batch_size):
        chunk = pairs[b : b + batch_size]
        input_ids, mask = _right_padded([ids for ids, _ in chunk], pad, device)
        z_chunk = None if z is None else z[b : b + batch_size]
        chunk_candidates = candidate_ids(None if candidates is None else candidates[b : b + batch_size], device)
        first = min(start for _, start in chunk) - 1  # the first position that predicts a continuation token
        logits = decoder(input_ids, mask, z=z_chunk, candidates=chunk_candidates,
                         logits_from=first).logits  # (B, T - first, V)
        # softmax in at least float32, never in half precision
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1-first, V)
        targets = input_ids[:, first + 1 :]  # (B, T-1-first)
        tok_logp = logp.gather(-1, targets[..., None]).squeeze(-1)
        predicted = logp.argmax(-1)
        for i, (ids, start) in enumerate(chunk):
            span = slice(start - 1 - first, len(ids) - 1 - first)
            out.append(TokenScores(targets[i, span], tok_logp[i, span], predicted[i, span]))
    return out


def continuation_nll(
    decoder: MemoryConditionedDecoder,
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: Sequence[str],
    z: Tensor | None = None,
    batch_size: int = 16,
    candidates: Sequence[Sequence[int]] | None = None,
) -> list[float]:
    """Mean token negative log-likelihood (nats) of each continuation after its prompt.

    Args:
        z: (N, C) one readout per prompt, or None (exactly the base decoder).
        (the rest as in :func:`score_tokens`)

    Returns:
        (N,) mean NLL over each continuation's tokens.
    """
    scored = score_tokens(decoder, tokenizer, prompts, continuations, z, batch_size, candidates)
    return [-s.log_probs.mean().item() for s in scored]


def prompt_row(tokenizer: Any, prompt: str, key: Any = 0, z: Tensor | None = None,
               candidates: Sequence[int] | None = None, max_new_tokens: int = 20, chat: bool = False) -> Row:
    """A prompt as a row of a `DecodeLoop` (see `generate` for the arguments; z (C,) or None)."""
    ids = _ids(tokenizer, prompt, special_tokens=not chat)
    if not ids:
        raise ValueError("cannot generate from an empty prompt")
    return Row(key, tuple(ids), z, None if candidates is None else tuple(candidates), max_new_tokens)


def decode_loop(decoder: MemoryConditionedDecoder, tokenizer: Any, chat: bool = False) -> DecodeLoop:
    """The `DecodeLoop` that `generate` decodes with (chat prompts share their template's prefix)."""
    return DecodeLoop(decoder, tokenizer.eos_token_id, reply_start=chat, prefix=template_prefix(tokenizer) if chat else None)


@torch.no_grad()
def generate(
    decoder: MemoryConditionedDecoder,
    tokenizer: Any,
    prompts: Sequence[str],
    z: Tensor | None = None,
    max_new_tokens: int = 20,
    batch_size: int = 16,
    chat: bool = False,
    candidates: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """Greedy continuations of each prompt, without the prompt, special tokens dropped.

    At most `batch_size` rows decode together (`decoding.DecodeLoop`: a row leaves the batch as
    it ends and the next prompt joins; chat prompts share their template's prefix states); a row
    stops at the tokenizer's eos token (or after `max_new_tokens`). With z=None this gives the
    base model's greedy `generate`. Decoders with sliding-window layers decode fixed batches.

    Args:
        z: (N, C) one readout per prompt, or None.
        chat: the prompts are formatted chat prompts (`larimar.model.chat`): tokenised without
            adding special tokens, and each continuation is a reply (`reply_start`).
        candidates: (N,) token ids of the text each readout recalls, or None.

    Returns:
        (N,) generated texts.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    _check_z(z, len(prompts))
    device, pad = _device(decoder), pad_id(tokenizer)
    if supports(decoder):
        todo = [prompt_row(tokenizer, p, i, None if z is None else z[i], None if candidates is None else candidates[i],
                           max_new_tokens, chat) for i, p in enumerate(prompts)]
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in decode_loop(decoder, tokenizer, chat).run(
            todo, batch_size)]
    rows = [_ids(tokenizer, p, special_tokens=not chat) for p in prompts]
    if any(not ids for ids in rows):
        raise ValueError("cannot generate from an empty prompt")
    texts: list[str] = []
    for b in range(0, len(prompts), batch_size):
        input_ids, mask = _left_padded(rows[b : b + batch_size], pad, device)
        z_chunk = None if z is None else z[b : b + batch_size]
        sequences = decoder.generate(
            input_ids, mask, z=z_chunk, max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, reply_start=chat,
            candidates=candidate_ids(None if candidates is None else candidates[b : b + batch_size], device),
        )  # (B, T + new)
        texts.extend(tokenizer.batch_decode(sequences[:, input_ids.shape[1] :], skip_special_tokens=True))
    return texts
