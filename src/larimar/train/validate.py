"""Does the decoder read its memory? Held-out losses and copy accuracy.

Copy accuracy: take a held-out sentence, replace its last word by a word from another
sentence, write the altered sentence into a memory, read it with the sentence minus its last
word, and count how often the replaced word's first token is the decoder's top-1 next token
after that prefix. Without memory it is near 0%; a decoder that reads its memory scores high.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..model.larimar import EpisodeBatch, LarimarModel
from ..model.text import split_last_word
from .data import Collator, Example, swap_last_word


@dataclass
class CopyResult:
    """Copy accuracy with and without memory over n sentences."""

    with_memory: float
    without_memory: float
    n: int
    episode_size: int


def copy_cases(sentences: list[str], seed: int = 0) -> list[tuple[str, str, str]]:
    """(altered sentence, prefix, replaced word) for sentences whose last word can be swapped."""
    rng = random.Random(seed)
    cases = []
    for s in sentences:
        head, word, _ = split_last_word(s)
        if not head or not word:
            continue
        for _ in range(10):
            donor = sentences[rng.randrange(len(sentences))]
            new_word = split_last_word(donor)[1]
            if new_word and new_word.lower() != word.lower():
                cases.append((swap_last_word(s, donor), head, new_word))
                break
    return cases


def _first_new_token(tokenizer, prefix: str, word: str) -> tuple[list[int], int]:
    """Token ids of the prefix and the first token of ' word' that follows it."""
    p = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{prefix} {word}", add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(p), len(full)) and p[n] == full[n]:
        n += 1
    return full[:n], full[n] if n < len(full) else -1


@torch.no_grad()
def copy_accuracy(model: LarimarModel, sentences: list[str], episode_size: int = 1, seed: int = 0, batch_size: int = 16) -> CopyResult:
    """Copy accuracy of the model's decoder with and without memory (see module docstring)."""
    model.eval()
    cases = copy_cases(sentences, seed)
    cases = cases[: len(cases) - len(cases) % episode_size]
    if not cases:
        raise ValueError("no usable sentences for copy accuracy")
    hits_mem = hits_plain = 0
    device = model.encoder.head.weight.device
    step = max(episode_size, batch_size - batch_size % episode_size)
    for start in range(0, len(cases), step):
        chunk = cases[start : start + step]
        z_w = model.encode([c[0] for c in chunk])  # (n, C)
        z_q = model.encode([c[1] for c in chunk])
        c = z_w.shape[-1]
        state = model.memory.write(z_w.reshape(-1, episode_size, c))
        z_r = model.config.readout_scale * model.memory.read(state, z_q.reshape(-1, episode_size, c)).reshape(-1, c)
        prefixes, targets = zip(*(_first_new_token(model.tokenizer, c_[1], c_[2]) for c_ in chunk))
        width = max(len(p) for p in prefixes)
        pad = model.tokenizer.pad_token_id or 0
        ids = torch.full((len(chunk), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prefixes):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
        last = mask.sum(1) - 1
        rows = torch.arange(len(chunk), device=device)
        target = torch.tensor(targets, device=device)
        for z, counter in ((z_r, "mem"), (None, "plain")):
            logits = model.decoder(ids, mask, z=z).logits[rows, last]  # (n, V)
            hits = int((logits.argmax(-1) == target).sum())
            if counter == "mem":
                hits_mem += hits
            else:
                hits_plain += hits
    n = len(cases)
    return CopyResult(hits_mem / n, hits_plain / n, n, episode_size)


@torch.no_grad()
def heldout_losses(model: LarimarModel, sentences: list[str], collator: Collator, episode_size: int) -> dict[str, float]:
    """Token-mean reconstruction loss through memory (queries = the sentences) and without memory."""
    model.eval()
    n = len(sentences) - len(sentences) % episode_size
    if n == 0:
        raise ValueError(f"need at least {episode_size} held-out sentences")
    totals = {"memory": 0.0, "plain": 0.0}
    tokens = 0
    for start in range(0, n, episode_size):
        batch: EpisodeBatch = collator([Example(s, s) for s in sentences[start : start + episode_size]])
        batch = batch.to(model.encoder.head.weight.device)
        out = model(batch)
        labels = batch.target_ids.masked_fill(batch.target_mask == 0, -100)
        plain = model.decoder(batch.target_ids, batch.target_mask, z=None, labels=labels).loss
        totals["memory"] += float(out.reconstruction) * out.tokens
        totals["plain"] += float(plain) * out.tokens
        tokens += out.tokens
    memory, plain = totals["memory"] / tokens, totals["plain"] / tokens
    return {"loss_memory": memory, "loss_plain": plain, "loss_ratio": memory / plain}

