"""Training for late-fusion conditioning (mode "output") on cached frozen-model states.

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

Symbols: n sentences per shard, H encoder width, D decoder width, C code size, E episode size.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from ..model.larimar import LarimarModel
from ..model.sequence import previous_tokens
from ..model.text import split_last_word
from .data import swap_last_word
from .trainer import TrainResult, latest_checkpoint, load_corpus, lr_lambda, read_checkpoint, write_checkpoint

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
    folder.mkdir(parents=True, exist_ok=True)
    tok = model.tokenizer
    eos = tok.eos_token or ""
    encoder, decoder = model.encoder, model.decoder
    encoder.eval()
    decoder.eval()
    device = encoder.head.weight.device
    paths = []
    n_shards = math.ceil(len(sentences) / shard_size)
    for shard in range(n_shards):
        path = folder / f"shard-{shard:05d}.pt"
        paths.append(path)
        if path.is_file():
            continue
        chunk = sentences[shard * shard_size : (shard + 1) * shard_size]
        pairs = fusion_examples(chunk, swap, seed * 100_003 + shard)
        ids = [tok(w + eos, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"] for w, _ in pairs]
        keep = [i for i, t in enumerate(ids)  # whole sentences only, with a last word to predict
                if t and t[-1] == tok.eos_token_id and answer_start(tok, pairs[i][1], t) < len(t) - 1]
        pairs, ids = [pairs[i] for i in keep], [ids[i] for i in keep]
        order = sorted(range(len(pairs)), key=lambda i: len(ids[i]))
        hidden: list[Tensor | None] = [None] * len(pairs)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), width), tok.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros_like(batch)
            for r, i in enumerate(rows):
                batch[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            h = decoder.final_hidden(batch.to(device), mask.to(device)).half().cpu()  # (b, T, D)
            for r, i in enumerate(rows):
                hidden[i] = h[r, : len(ids[i])].clone()
        written, query = [w for w, _ in pairs], [q for _, q in pairs]
        pooled = {}
        for name, texts in (("pooled_w", written), ("pooled_q", query)):
            parts = []
            for start in range(0, len(texts), 64):
                t = encoder.tokenize(texts[start : start + 64])
                parts.append(encoder.pool(t["input_ids"], t["attention_mask"]).half().cpu())
            pooled[name] = torch.cat(parts)
        data = {
            "written": written, "query": query, **pooled,
            "ids": [torch.tensor(t) for t in ids], "hidden": hidden,
            "answer": [answer_start(tok, q, t) for q, t in zip(query, ids)],
        }
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.rename(path)
        logger.info("cached shard %d/%d (%d sentences)", shard + 1, n_shards, len(written))
    return paths


def projection_readout(z_written: Tensor, z_query: Tensor, key_size: int | None = None) -> Tensor:
    """The deterministic read of a fresh memory after a one-shot write, in closed form.

    Writing Z (B, E, C) with full-rank keys gives M = W0^+ Z; reading with W = Zq M^+ gives
    Zr = Zq Z^+ Z, the orthogonal projection of each query onto the span of the written
    latents, whatever the K x C memory and its prior. Computing it through the E x E Gram
    matrix avoids the SVDs of K x C matrices, which would dominate a training step on CPU.
    (`tests/train/test_fusion.py` checks it against `EpisodicMemory.write` + `read`.)

    With `key_size` (a memory addressed by the first key_size coordinates only) the
    coefficients come from those coordinates, Zr = Zq_key Z_key^+ Z.

    Args:
        z_written: (B, E, C) written latents.
        z_query: (B, Q, C) queries.
        key_size: the memory's key_size; None: all coordinates address.

    Returns:
        (B, Q, C) readouts.
    """
    kw, kq = (z_written, z_query) if key_size is None else (z_written[..., :key_size], z_query[..., :key_size])
    gram = kw @ kw.transpose(1, 2)  # (B, E, E)
    coeff = kq @ kw.transpose(1, 2) @ torch.linalg.pinv(gram, hermitian=True)  # (B, Q, E)
    return coeff @ z_written


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

    def __len__(self) -> int:
        return len(self.ids)


def load_shard(path: Path, model: LarimarModel) -> CachedShard:
    """Read a shard written by `build_cache`."""
    data = torch.load(path, weights_only=False)
    enc = model.encoder
    lex = enc.lexical if enc.lexical_head is not None else None
    seq = enc.sequence if enc.sequence_size else None
    return CachedShard(
        data["pooled_w"], data["pooled_q"],
        lex(data["written"]) if lex else None, lex(data["query"]) if lex else None,
        seq(data["written"]) if seq else None, seq(data["query"]) if seq else None,
        data["ids"], data["hidden"], data["answer"],
    )


class FusionTrainer:
    """Trains the trainable parts of a mode-"output" Larimar model on cached frozen states.

    Same output folder layout as `Trainer` (config.yaml, log.jsonl, checkpoint-STEP/, final/),
    exact resume included.

    Args:
        config: the run; config.uses_cached_states must hold.
        model: a model to train; None builds one from config.model.
        sentences: (train, held-out) sentences; None loads config.data.corpus.
    """

    def __init__(self, config: Any, model: LarimarModel | None = None,
                 sentences: tuple[list[str], list[str]] | None = None) -> None:
        if not config.uses_cached_states:
            raise ValueError('cached-state training needs conditioning mode "output", trainable "adapter" '
                             "and a frozen encoder body; use Trainer for other configurations")
        self.config = config
        self.out = Path(config.output_dir)
        torch.manual_seed(config.seed)
        self.model = model if model is not None else LarimarModel.from_config(config.model)
        self.train_sentences, heldout = sentences if sentences is not None else load_corpus(config)
        self.heldout = heldout[: config.loop.eval_sentences]
        self.cache_dir = Path(config.fusion.cache_dir or self.out / "cache")
        frozen = config.fusion.frozen
        names = {n for n, _ in self.model.named_parameters()}
        unknown = [f for f in frozen if not any(n.startswith(f) for n in names)]
        if unknown:
            raise ValueError(f"fusion.frozen names no parameter: {unknown}")
        self.params = [p for n, p in self.model.named_parameters()
                       if p.requires_grad and not any(n.startswith(f) for f in frozen)]
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.scheduler = LambdaLR(self.optimizer, lr_lambda(config))
        self.step = 0
        self.shards: list[CachedShard] = []

    # ------------------------------------------------------------------------- bookkeeping
    def _log(self, record: dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save_checkpoint(self) -> Path:
        """Write checkpoint-STEP/ atomically and prune old ones."""
        return write_checkpoint(self.out, {"step": self.step}, self.model, self.optimizer, self.scheduler,
                                self.config.loop.keep_checkpoints)

    def resume(self, folder: Path) -> None:
        """Restore weights, optimiser, scheduler, RNG and step."""
        self.step = read_checkpoint(folder, self.model, self.optimizer, self.scheduler)["step"]

    def validate(self) -> dict[str, float]:
        """Copy accuracy through the full model (E = 1 and E = 4) on held-out sentences."""
        from .validate import copy_accuracy

        single = copy_accuracy(self.model, self.heldout, episode_size=1, seed=self.config.seed)
        four = copy_accuracy(self.model, self.heldout, episode_size=4, seed=self.config.seed)
        self.model.train()
        return {"copy_acc": single.with_memory, "copy_acc_e4": four.with_memory,
                "copy_acc_plain": single.without_memory, "copy_n": single.n}

    # ------------------------------------------------------------------------- data
    def prepare(self) -> None:
        """Build (or complete) the cache of frozen states and load it."""
        f = self.config.fusion
        paths = build_cache(self.model, self.train_sentences, self.cache_dir, f.shard_size,
                            self.config.data.swap_last_word, self.config.seed, self.config.data.max_tokens,
                            f.cache_batch)
        self.shards = [load_shard(p, self.model) for p in paths]
        if sum(len(s) for s in self.shards) < f.batch_sentences:
            raise ValueError(f"the cache holds fewer than batch_sentences={f.batch_sentences} usable sentences; "
                             "use more training sentences or a smaller batch")

    def _latents(self, shard: CachedShard, rows: list[int], query: list[bool]) -> tuple[Tensor, Tensor]:
        enc = self.model.encoder
        device = enc.head.weight.device
        idx, full = torch.tensor(rows), torch.tensor(query)[:, None]
        pw = shard.pooled_w[idx].float().to(device)
        pq = torch.where(full, shard.pooled_w[idx], shard.pooled_q[idx]).float().to(device)
        sw = sq = None
        if shard.seq_w is not None and shard.seq_q is not None:
            sw, sq = shard.seq_w[idx], torch.where(full, shard.seq_w[idx], shard.seq_q[idx])
        if shard.lex_w is None:
            return enc.latent(pw, sequence=sw), enc.latent(pq, sequence=sq)
        lq = tuple(torch.where(full, a[idx], b[idx]) for a, b in zip(shard.lex_w, shard.lex_q))
        return enc.latent(pw, *(t[idx] for t in shard.lex_w), sw), enc.latent(pq, *lq, sq)

    def batch_loss(self, gen: torch.Generator) -> tuple[Tensor, int]:
        """Loss of one random batch of episodes; returns it and the number of scored tokens."""
        f = self.config.fusion
        sizes = f.episode_sizes
        e = sizes[int(torch.randint(len(sizes), (1,), generator=gen))]
        lengths = torch.tensor([len(s) for s in self.shards], dtype=torch.float)
        picks: dict[int, list[int]] = {}
        for s in torch.multinomial(lengths, f.batch_sentences, replacement=True, generator=gen).tolist():
            picks.setdefault(s, []).append(int(torch.randint(len(self.shards[s]), (1,), generator=gen)))
        z_w, z_q, hid, tgt, inp, owner, cur, prev = [], [], [], [], [], [], [], []
        base = 0
        for s, rows in picks.items():
            shard = self.shards[s]
            full = (torch.rand(len(rows), generator=gen) < f.full_query).tolist()
            a, b = self._latents(shard, rows, full)
            z_w.append(a)
            z_q.append(b)
            for j, r in enumerate(rows):
                ids, hidden, start = shard.ids[r], shard.hidden[r], shard.answer[r]
                positions = list(range(start - 1, len(ids) - 1))  # predict the last word onwards
                if start > 1 and f.extra_positions:
                    positions += torch.randint(0, start - 1, (f.extra_positions,), generator=gen).tolist()
                hid.append(hidden[positions])
                inp.append((ids, positions))
                tgt.append(ids[[p + 1 for p in positions]])
                cur.append(ids[positions])
                prev.append(previous_tokens(ids[None])[0, positions])
                owner += [base + j] * len(positions)
            base += len(rows)
        device = self.model.encoder.head.weight.device
        c = self.model.config.memory.code_size  # the whole latent, sequence channel included
        zw, zq = torch.cat(z_w).view(-1, e, c), torch.cat(z_q).view(-1, e, c)
        z_read = self.model.config.readout_scale * projection_readout(zw, zq, self.model.config.memory.key_size).reshape(-1, c)  # (N, C)
        hidden = torch.cat(hid).float().to(device)  # (R, D)
        decoder = self.model.decoder
        seen = self._coverage(inp, z_read)  # (R, 1)
        tokens = torch.cat(cur).to(device)  # (R,) the token at each scored position
        previous = torch.cat(prev).to(device)  # (R,) the token before it
        logits = decoder.fused_logits(hidden, z_read[torch.tensor(owner, device=device)], seen, tokens, previous)
        target = torch.cat(tgt).to(device)
        return F.cross_entropy(logits.float(), target), len(target)

    def _coverage(self, rows: list[tuple[Tensor, list[int]]], z_read: Tensor) -> Tensor:
        """Copy coverage (R, 1) at the scored positions of each sentence (see `copy_coverage`)."""
        decoder = self.model.decoder
        device = z_read.device
        width = max(len(ids) for ids, _ in rows)
        padded = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (ids, _) in enumerate(rows):
            padded[i, : len(ids)] = ids
            padded[i, len(ids) :] = ids[-1]  # repeats never lower a running maximum of what came before
        embeds = decoder.decoder.get_input_embeddings()(padded.to(device))  # (N, T, D)
        seen = decoder.copy_coverage(embeds, z_read)  # (N, T, 1)
        return torch.cat([seen[i, positions] for i, (_, positions) in enumerate(rows)])

    # ------------------------------------------------------------------------- the loop
    def train(self, resume: bool = True) -> TrainResult:
        """Cache, then train until max_steps (or max_minutes), checkpointing and validating."""
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(self.out / "config.yaml")
        latest = latest_checkpoint(self.out) if resume else None
        if latest is not None:
            self.resume(latest)
        self.prepare()
        flush = torch.set_flush_denormal(True)  # softmax tails underflow into denormals: 10x slower on CPU
        try:
            return self._loop()
        finally:
            if flush:
                torch.set_flush_denormal(False)

    def _loop(self) -> TrainResult:
        cfg = self.config
        start, tokens, losses, validation = time.perf_counter(), 0, [], None
        bar = tqdm(total=cfg.loop.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        self.model.train()
        while self.step < cfg.loop.max_steps:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
            loss, n = self.batch_loss(gen)
            loss.backward()
            if cfg.optim.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            self.step += 1
            losses.append(float(loss.detach()))
            tokens += n
            elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", tok_s=f"{tokens / elapsed:.0f}")
            if self.step % cfg.loop.log_every == 0:
                self._log({"step": self.step, "loss": float(np.mean(losses[-cfg.loop.log_every:])),
                           "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens / elapsed,
                           "elapsed_s": elapsed})
            if self.step % cfg.loop.eval_every == 0 or self.step == cfg.loop.max_steps:
                validation = self.validate()
                self._log({"step": self.step, "validation": validation})
                bar.write(f"step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in validation.items()))
            out_of_time = cfg.loop.max_minutes is not None and elapsed > 60 * cfg.loop.max_minutes
            if self.step % cfg.loop.save_every == 0 or self.step == cfg.loop.max_steps or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                break
        bar.close()
        finished = self.step >= cfg.loop.max_steps
        if finished:
            self.model.save_pretrained(self.out / "final")
        return TrainResult(self.step, finished, self.out, validation)
