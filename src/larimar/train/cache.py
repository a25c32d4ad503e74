"""The cache of frozen-model states that late-fusion training (`larimar.train.fusion`) reads.

With conditioning mode "output", a frozen decoder's hidden states never depend on the memory,
and with a frozen encoder body neither do its pooled states. Both are computed once per
training sentence and stored in shards; training then runs only the trainable parts (latent
heads, the memory, the fusion map and the output head) at the positions that enter the loss.
On a CPU this is two orders of magnitude faster per sentence than backpropagating through the
decoder, which is what lets the built-in model train on a laptop.

Cache layout (`<output_dir>/cache/shard-NNNNN.pt`, each a dict):
    written    list[str]     the sentences as written (a share has their last word swapped)
    query      list[str]     each sentence minus its last word (the copy-task query)
    pooled_w   (n, H) fp16   encoder pooled states of `written`
    pooled_q   (n, H) fp16   encoder pooled states of `query`
    ids        list[(T_i,)]  decoder tokens of written + eos
    hidden     list[(T_i, D)] fp16 decoder final hidden states of those tokens
    answer     list[int]     index of the first token of the last word in `ids`
    chat       bool          (question shards, `build_chat_cache`) `query` holds questions,
                             `ids` a chat prompt then the reply, `answer` the reply's start

Complete shards are reused by index, unchecked: delete a cache folder after changing what it
is built from (the corpus, `data.*`, `fusion.questions` and `fusion.question_*`).

Symbols: n sentences per shard, H encoder width, D decoder width, C code size, E episode size.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..model.larimar import LarimarModel
from ..model.text import split_last_word
from .data import swap_last_word
from .questions import ChatExample

logger = logging.getLogger(__name__)

SHARD_GLOB = "shard-*.pt"


def answer_start(tokenizer: Any, head: str, ids: list[int]) -> int:
    """Index in `ids` (tokens of the whole sentence) of the first token after `head`."""
    prefix = tokenizer(head, add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(prefix), len(ids)) and prefix[n] == ids[n]:
        n += 1
    return n


def fusion_examples(sentences: list[str], swap: float, seed: int) -> list[tuple[str, str]]:
    """(written, query) pairs: a share `swap` of sentences get another sentence's last word.

    The query is the written sentence minus its last word; sentences without a last word
    to swap are dropped.
    """
    rng = random.Random(seed)
    out = []
    for s in sentences:
        written = swap_last_word(s, sentences[rng.randrange(len(sentences))]) if rng.random() < swap else s
        head, word, _ = split_last_word(written)
        if head and word:
            out.append((written, head))
    return out


@torch.no_grad()
def build_cache(model: LarimarModel, sentences: list[str], folder: Path, shard_size: int = 1000,
                swap: float = 0.5, seed: int = 0, max_tokens: int = 40, batch_size: int = 32) -> list[Path]:
    """Compute and store the frozen states of `sentences` in shards; existing shards are kept.

    Returns the shard paths in order. Safe to interrupt: a shard appears only when complete.
    """
    tok = model.tokenizer
    eos = tok.eos_token or ""

    def shard_data(shard: int, chunk: list[str]) -> dict[str, Any]:
        pairs = fusion_examples(chunk, swap, seed * 100_003 + shard)
        ids = [tok(w + eos, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"] for w, _ in pairs]
        keep = [i for i, t in enumerate(ids)  # whole sentences only, with a last word to predict
                if t and t[-1] == tok.eos_token_id and answer_start(tok, pairs[i][1], t) < len(t) - 1]
        pairs, ids = [pairs[i] for i in keep], [ids[i] for i in keep]
        return {"written": [w for w, _ in pairs], "query": [q for _, q in pairs], "ids": ids,
                "answer": [answer_start(tok, q, t) for (_, q), t in zip(pairs, ids)]}

    return _cache_shards(model, sentences, folder, shard_size, batch_size, shard_data)


@torch.no_grad()
def build_chat_cache(model: LarimarModel, examples: list[ChatExample], folder: Path, shard_size: int = 1000,
                     max_tokens: int = 96, batch_size: int = 32) -> list[Path]:
    """`build_cache` for question episodes: `written` holds the facts, `query` the questions,
    `ids` the chat prompt's tokens then the reply's (the fact's tokens and eos, as the sequence
    channel holds them), `answer` the reply's first index; episodes over `max_tokens` are dropped."""
    tok = model.tokenizer
    end = [tok.eos_token_id] if tok.eos_token_id is not None else []

    def shard_data(shard: int, chunk: list[ChatExample]) -> dict[str, Any]:
        prompts = [tok(e.prompt, add_special_tokens=False)["input_ids"] for e in chunk]
        replies = [tok(e.fact, add_special_tokens=False)["input_ids"] + end for e in chunk]
        keep = [i for i in range(len(chunk)) if len(replies[i]) > 1 and len(prompts[i]) + len(replies[i]) <= max_tokens]
        return {"written": [chunk[i].fact for i in keep], "query": [chunk[i].question for i in keep],
                "ids": [prompts[i] + replies[i] for i in keep], "answer": [len(prompts[i]) for i in keep],
                "chat": True}

    return _cache_shards(model, examples, folder, shard_size, batch_size, shard_data)


def _cache_shards(model: LarimarModel, items: list[Any], folder: Path, shard_size: int, batch_size: int,
                  shard_data: Any) -> list[Path]:
    """Shards of `items`: shard_data(index, chunk) gives the texts, token ids and answer starts;
    this adds the decoder's final hidden states and the encoder's pooled states."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder, decoder = model.encoder, model.decoder
    encoder.eval()
    decoder.eval()
    device = encoder.head.weight.device
    pad = model.tokenizer.pad_token_id or 0
    paths = []
    n_shards = math.ceil(len(items) / shard_size)
    for shard in range(n_shards):
        path = folder / f"shard-{shard:05d}.pt"
        paths.append(path)
        if path.is_file():
            continue
        data = shard_data(shard, items[shard * shard_size : (shard + 1) * shard_size])
        ids = data["ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        hidden: list[Tensor | None] = [None] * len(ids)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(batch)
            for r, i in enumerate(rows):
                batch[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            h = decoder.final_hidden(batch.to(device), mask.to(device)).half().cpu()  # (b, T, D)
            for r, i in enumerate(rows):
                hidden[i] = h[r, : len(ids[i])].clone()
        for name, texts in (("pooled_w", data["written"]), ("pooled_q", data["query"])):
            parts = []
            for start in range(0, len(texts), 64):
                t = encoder.tokenize(texts[start : start + 64])
                parts.append(encoder.pool(t["input_ids"], t["attention_mask"]).half().cpu())
            data[name] = torch.cat(parts) if parts else torch.zeros(0, 0, dtype=torch.float16)
        data.update(ids=[torch.tensor(t) for t in ids], hidden=hidden)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.rename(path)
        logger.info("cached shard %d/%d of %s (%d texts)", shard + 1, n_shards, folder, len(ids))
    return paths


@dataclass
class CachedShard:
    """One cache shard in memory, with the lexical channel's inputs precomputed."""

    pooled_w: Tensor
    pooled_q: Tensor
    lex_w: tuple[Tensor, Tensor] | None
    lex_q: tuple[Tensor, Tensor] | None
    seq_w: Tensor | None
    seq_q: Tensor | None
    ids: list[Tensor]
    hidden: list[Tensor]
    answer: list[int]
    chat: bool = False

    def __len__(self) -> int:
        return len(self.ids)


def load_shard(path: Path, model: LarimarModel) -> CachedShard:
    """Read a shard written by `build_cache`."""
    data = torch.load(path, weights_only=False)
    if not data["ids"]:  # every text of the shard was dropped
        return CachedShard(data["pooled_w"], data["pooled_q"], None, None, None, None, [], [], [], bool(data.get("chat")))
    enc = model.encoder
    lex = enc.lexical if enc.lexical_head is not None else None
    seq = enc.sequence if enc.sequence_size else None
    return CachedShard(
        data["pooled_w"], data["pooled_q"],
        lex(data["written"]) if lex else None, lex(data["query"]) if lex else None,
        seq(data["written"]) if seq else None, seq(data["query"]) if seq else None,
        data["ids"], data["hidden"], data["answer"], bool(data.get("chat", False)),
    )
