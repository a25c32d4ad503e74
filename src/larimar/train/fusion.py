"""Training for late-fusion conditioning (mode "output") on cached frozen-model states.

With conditioning mode "output", a frozen decoder's hidden states never depend on the memory,
and with a frozen encoder body neither do its pooled states. Both are computed once per
training text and stored in shards (`larimar.train.cache`); training then runs only the
trainable parts (latent heads, the memory, the fusion map and the output head) at the positions
that enter the loss. On a CPU this is two orders of magnitude faster per sentence than
backpropagating through the decoder, which is what lets the built-in model train on a laptop.

Symbols: H encoder width, D decoder width, C code size, E episode size.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from ..model.larimar import LarimarModel
from ..model.sequence import START, candidate_ids, previous_tokens
from .cache import CachedShard, build_cache, build_chat_cache, load_shard
from .corpus import TRAIN_FILE
from .questions import load_examples
from .trainer import (
    TrainResult,
    latest_checkpoint,
    load_corpus,
    lr_lambda,
    read_checkpoint,
    write_checkpoint,
)

logger = logging.getLogger(__name__)


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
        self.chat_shards: list[CachedShard] = []

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
        """Build (or complete) the caches of frozen states and load them."""
        f = self.config.fusion
        paths = build_cache(self.model, self.train_sentences, self.cache_dir, f.shard_size,
                            self.config.data.swap_last_word, self.config.seed, self.config.data.max_tokens,
                            f.cache_batch)
        self.shards = [load_shard(p, self.model) for p in paths]
        if sum(len(s) for s in self.shards) < f.batch_sentences:
            raise ValueError(f"the cache holds fewer than batch_sentences={f.batch_sentences} usable sentences; "
                             "use more training sentences or a smaller batch")
        if f.question_sentences:
            examples = load_examples(f.questions, self.model.tokenizer, f.question_cases, f.question_templated,
                                     f.question_casual, self.config.seed, qa=f.question_qa,
                                     corpus=Path(self.config.data.corpus) / TRAIN_FILE,
                                     corpus_count=f.question_corpus)
            paths = build_chat_cache(self.model, examples, self.cache_dir / "questions", f.shard_size,
                                     f.question_max_tokens, f.cache_batch)
            self.chat_shards = [load_shard(p, self.model) for p in paths]
            if not any(len(s) for s in self.chat_shards):
                raise ValueError("no question episode fits fusion.question_max_tokens; raise it")

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
        """Loss of one random batch of episodes; returns it and the number of scored tokens.

        Statements (`batch_sentences`, in episodes of one drawn size) are read back from the
        closed-form readout of their episode, at their last word and what follows it; question
        episodes (`question_sentences`) are read with the fact's own latent, at every token of
        the reply, with the sequence channel's context restarting at the reply.
        """
        f = self.config.fusion
        sizes = f.episode_sizes
        e = sizes[int(torch.randint(len(sizes), (1,), generator=gen))]
        device = self.model.encoder.head.weight.device
        c = self.model.config.memory.code_size  # the whole latent, sequence channel included
        scale = self.model.config.readout_scale
        statements, questions = _Rows(), _Rows()
        z_w, z_q = [], []
        for shard, picked in _draw(self.shards, f.batch_sentences, gen):
            full = (torch.rand(len(picked), generator=gen) < f.full_query).tolist()
            a, b = self._latents(shard, picked, full)
            z_w.append(a)
            z_q.append(b)
            for r in picked:
                ids, start = shard.ids[r], shard.answer[r]
                positions = list(range(start - 1, len(ids) - 1))  # predict the last word onwards
                if start > 1 and f.extra_positions:
                    positions += torch.randint(0, start - 1, (f.extra_positions,), generator=gen).tolist()
                index = torch.tensor(positions)
                statements.add(shard, r, positions, previous_tokens(ids[None])[0][index], ids[index], text=ids)
        zw, zq = torch.cat(z_w).view(-1, e, c), torch.cat(z_q).view(-1, e, c)
        z_read = scale * projection_readout(zw, zq, self.model.config.memory.key_size).reshape(-1, c)  # (N, C)
        code = self.model.config.conditioning.code_size
        if f.sequence_dropout and c > code:
            drop = torch.rand(len(z_read), generator=gen) < f.sequence_dropout
            z_read = torch.cat([z_read[:, :code], z_read[:, code:] * (~drop).to(z_read)[:, None]], 1)
        groups = [(statements, z_read)]
        z_chat = []
        for shard, picked in _draw(self.chat_shards, f.question_sentences, gen):
            written, _ = self._latents(shard, picked, [True] * len(picked))
            z_chat.append(scale * written)  # what recall by key gives back
            for r in picked:
                ids, start = shard.ids[r], shard.answer[r]
                questions.add(shard, r, *reply_contexts(ids, start), text=ids[start:])
        if z_chat:
            groups.append((questions, torch.cat(z_chat)))
        total, count = 0.0, 0
        for rows, z in groups:
            order = sorted(range(len(rows.inputs)), key=lambda i: len(rows.inputs[i][1]))
            for start in range(0, len(order), 32):  # texts of similar length together: little padding
                part = order[start : start + 32]
                logits, target = self._fused(rows.subset(part), z[torch.tensor(part)].to(device))
                total = total + F.cross_entropy(logits.flatten(0, -2).float(), target.flatten().to(device),
                                                ignore_index=-100, reduction="sum")
                count += int((target != -100).sum())
        return total / count, count

    def _fused(self, rows: _Rows, z: Tensor) -> tuple[Tensor, Tensor]:
        """Fused logits (N, P, V) at the texts' scored positions (padded to the longest) under
        their readouts z (N, C), as decoding computes them (the sequence channel's scores over
        each text's own tokens), and the targets (N, P), -100 on padding."""
        decoder = self.model.decoder
        device = z.device
        n, width = len(rows.inputs), max(len(positions) for _, positions in rows.inputs)
        hidden = torch.zeros(n, width, rows.hidden[0].shape[-1])
        tokens = torch.full((n, width), START, dtype=torch.long)
        previous, index = tokens.clone(), torch.zeros(n, width, dtype=torch.long)
        target = torch.full((n, width), -100, dtype=torch.long)
        for i, (ids, positions) in enumerate(rows.inputs):
            k = len(positions)
            hidden[i, :k], tokens[i, :k], previous[i, :k] = rows.hidden[i].float(), rows.tokens[i], rows.previous[i]
            target[i, :k], index[i, :k] = rows.target[i], torch.tensor(positions)
        seen = self._coverage(rows.inputs, z).gather(1, index[..., None].to(device))  # (N, P, 1)
        candidates = None
        if decoder.successors is not None:
            code = self.model.config.conditioning.code_size
            z = torch.cat([z[:, :code], z[:, code:].detach()], 1)  # the sketch is data, not a trained output
            candidates = candidate_ids([sorted(set(t.tolist())) for t in rows.texts], device)
        logits = decoder.fused_logits(hidden.to(device), z, seen, tokens.to(device), previous.to(device), candidates)
        return logits, target

    def _coverage(self, rows: list[tuple[Tensor, list[int]]], z_read: Tensor) -> Tensor:
        """Copy coverage (N, T, 1) at every position of each text (see `copy_coverage`)."""
        decoder = self.model.decoder
        device = z_read.device
        width = max(len(ids) for ids, _ in rows)
        padded = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (ids, _) in enumerate(rows):
            padded[i, : len(ids)] = ids
            padded[i, len(ids) :] = ids[-1]  # repeats never lower a running maximum of what came before
        embeds = decoder.decoder.get_input_embeddings()(padded.to(device))  # (N, T, D)
        return decoder.copy_coverage(embeds, z_read)  # (N, T, 1)

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


def reply_contexts(ids: Tensor, start: int) -> tuple[list[int], Tensor, Tensor]:
    """The positions that predict a reply ids[start:] and the sequence channel's contexts there,
    as `ask` decodes it: (positions, previous, tokens), the context restarting at (START, START)
    before the reply's first token."""
    reply = torch.cat([torch.full((2,), START, dtype=ids.dtype), ids[start:]])
    n = len(ids) - start
    return list(range(start - 1, len(ids) - 1)), reply[:n], reply[1 : n + 1]


def _draw(shards: list[CachedShard], count: int, gen: torch.Generator) -> list[tuple[CachedShard, list[int]]]:
    """`count` rows drawn with replacement, shards weighted by size, grouped by shard."""
    if not count:
        return []
    lengths = torch.tensor([len(s) for s in shards], dtype=torch.float)
    picks: dict[int, list[int]] = {}
    for s in torch.multinomial(lengths, count, replacement=True, generator=gen).tolist():
        picks.setdefault(s, []).append(int(torch.randint(len(shards[s]), (1,), generator=gen)))
    return [(shards[s], rows) for s, rows in picks.items()]


class _Rows:
    """The scored positions of a batch, one entry per text: states, targets, the sequence
    channel's contexts and the ids of the text its readout's sketch holds."""

    def __init__(self) -> None:
        self.hidden: list[Tensor] = []
        self.target: list[Tensor] = []
        self.tokens: list[Tensor] = []
        self.previous: list[Tensor] = []
        self.inputs: list[tuple[Tensor, list[int]]] = []
        self.texts: list[Tensor] = []

    def add(self, shard: CachedShard, row: int, positions: list[int], previous: Tensor, tokens: Tensor, *,
            text: Tensor) -> None:
        """The scored `positions` of the shard's text `row`, with the sequence channel's context
        (`previous`, `tokens`) at each, and the ids its readout's sketch holds (`text`)."""
        ids, index = shard.ids[row], torch.tensor(positions)
        self.hidden.append(shard.hidden[row][index])
        self.target.append(ids[index + 1])
        self.tokens.append(tokens)
        self.previous.append(previous)
        self.inputs.append((ids, positions))
        self.texts.append(text)

    def subset(self, index: list[int]) -> _Rows:
        """The texts at `index`, in that order."""
        out = _Rows()
        for name in ("hidden", "target", "tokens", "previous", "inputs", "texts"):
            setattr(out, name, [getattr(self, name)[i] for i in index])
        return out
