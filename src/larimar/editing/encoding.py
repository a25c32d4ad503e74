"""Texts -> memory latents and scope-detector embeddings, in one encoder pass.

Shapes: N texts, C code size (latent), H encoder hidden size (embedding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.encoder import SentenceEncoder

MEMORY_DTYPE = torch.float64
"""Every memory computation runs in float64, whatever the model's dtype."""


@torch.no_grad()
def encode_texts(encoder: SentenceEncoder, texts: Sequence[str], batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Latents and L2-normalised embeddings of texts, from one pass of the encoder body.

    Equal to `encoder.encode(texts)` and `encoder.embed(texts)`, which would run the body twice.

    Returns:
        latents (N, C) and embeddings (N, H), both float64.
    """
    was_training = encoder.training
    encoder.eval()
    latents, embeddings = [], []
    try:
        for start in range(0, len(texts), batch_size):
            batch = encoder.tokenize(list(texts[start : start + batch_size]))
            pooled = encoder.pool(batch["input_ids"], batch["attention_mask"])  # (b, H)
            latent = encoder.latent(pooled, batch.get("lexical_ids"), batch.get("lexical_mask"))
            latents.append(latent.to(MEMORY_DTYPE))  # (b, C)
            embeddings.append(F.normalize(pooled.to(MEMORY_DTYPE), dim=-1))  # (b, H)
    finally:
        encoder.train(was_training)
    return torch.cat(latents), torch.cat(embeddings)


def encoder_tokens(encoder: SentenceEncoder, text: str) -> int:
    """Number of encoder tokens of `text`, special tokens included, before truncation."""
    return len(encoder.tokenizer(text)["input_ids"])
