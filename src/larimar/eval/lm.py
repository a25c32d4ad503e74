"""Batched scoring and greedy generation for any Hugging Face causal LM.

Conventions shared by every editor:

* A continuation is joined to its prompt with one space unless the prompt already ends with
  whitespace or the continuation starts with it (:func:`join_continuation`), so callers pass
  ``"piano"`` and the model scores ``" piano"`` after ``"Toko Yasuda, the"``.
* Prompt and prompt+continuation are tokenised as whole strings; the scored tokens are those
  after the longest common token prefix, so merges across the boundary are handled and no BOS
  token is assumed (SmolLM2 adds none). The first token of a text has no context and is never
  scored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

# Tokenisation conventions are shared with the memory-conditioned decoder's scoring.
from ..model.text import _common_prefix, _ids, encode_pairs, join_continuation, pad_id

logger = logging.getLogger(__name__)

_pad_id = pad_id
__all__ = ["_common_prefix", "_ids", "_pad_id", "continuation_nll", "encode_pairs", "generate_greedy", "join_continuation"]


@torch.no_grad()
def continuation_nll(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 16,
) -> list[float]:
    """Mean token negative log-likelihood (nats) of each continuation given its prompt.

    Sequences are right-padded and masked, so results do not depend on batch composition.

    Args:
        model: causal LM returning ``logits`` (B, T, V).
        tokenizer: its tokenizer (callable returning ``input_ids``).
        prompts: (N,) prompt texts.
        continuations: (N,) continuation texts, see :func:`join_continuation`.
        batch_size: sequences per forward pass.

    Returns:
        (N,) mean NLL over the continuation tokens.
    """
    pairs = encode_pairs(tokenizer, prompts, continuations)
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    out: list[float] = []
    for b in range(0, len(pairs), batch_size):
        chunk = pairs[b : b + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(input_ids)
        for i, (ids, _) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids, device=device)
            mask[i, : len(ids)] = 1
        logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
        # softmax in at least float32, never in half precision
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
        tok_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        for i, (ids, start) in enumerate(chunk):
            out.append(-tok_logp[i, start - 1 : len(ids) - 1].mean().item())
    return out


@torch.no_grad()
def generate_greedy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
    temperature: float = 0.0,
) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), special tokens dropped.

    With ``temperature > 0`` tokens are sampled instead (softmax of logits / temperature, no
    top-k / top-p), from torch's global generator: seed it (``torch.manual_seed``) first.

    Returns:
        (N,) generated texts, without the prompt; generation stops at EOS.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    texts: list[str] = []
    for b in range(0, len(prompts), batch_size):
        encoded = [_ids(tokenizer, p) for p in prompts[b : b + batch_size]]
        if any(not ids for ids in encoded):
            raise ValueError("cannot generate from an empty prompt")
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(encoded):
            input_ids[i, width - len(ids) :] = torch.tensor(ids, device=device)
            mask[i, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )  # (B, width + new)
        texts.extend(tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True))
    return texts
