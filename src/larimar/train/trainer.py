"""The training loop: one config, CPU or one/many GPUs (through accelerate), exact resume.

    larimar train --config configs/train/NAME.yaml            # CPU or one GPU
    accelerate launch -m larimar.cli train --config ...       # several GPUs

Output folder: config.yaml, log.jsonl, checkpoint-STEP/ (trained weights, optimiser,
scheduler, RNG and data position), final/ (a model loadable with LarimarModel.from_pretrained).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import save_file
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from ..model.larimar import EpisodeBatch, LarimarModel, LossWeights
from .config import TrainConfig
from .corpus import HELDOUT_FILE, TRAIN_FILE, CorpusConfig, build_corpus, load_sentences
from .data import Collator, EpisodeStream, PooledCache
from .validate import copy_accuracy, heldout_losses

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trained.safetensors"


@dataclass
class TrainResult:
    """What a call to `train` did."""

    step: int
    """Optimiser steps completed in the run so far."""
    finished: bool
    """Whether max_steps was reached (else stopped by max_minutes)."""
    output_dir: Path
    last_validation: dict[str, float] | None


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Warm-up then linear/cosine decay to zero at max_steps (or constant)."""
    warm, total, kind = config.optim.warmup_steps, config.loop.max_steps, config.optim.schedule

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 1.0 - progress if kind == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def load_corpus(config: TrainConfig) -> tuple[list[str], list[str]]:
    """Training and held-out sentences, building the corpus from offline sources if missing."""
    folder = Path(config.data.corpus)
    if not (folder / TRAIN_FILE).is_file():
        logger.info("no corpus at %s; building it from the offline sources", folder)
        build_corpus(CorpusConfig(output_dir=folder, seed=config.seed))
    train = load_sentences(folder / TRAIN_FILE)
    if config.data.max_sentences:
        train = train[: config.data.max_sentences]
    return train, load_sentences(folder / HELDOUT_FILE)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(out: Path, position: dict[str, int], model: LarimarModel, optimizer: Any,
                     scheduler: Any, keep: int) -> Path:
    """Write out/checkpoint-STEP/ atomically (trained weights, optimiser, scheduler, RNG and the
    data position, whose "step" names the folder) and delete all but the newest `keep`."""
    folder = out / f"checkpoint-{position['step']:07d}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.trained_state_dict().items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               tmp / "optim.pt")
    (tmp / STATE_FILE).write_text(json.dumps(position))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in sorted(out.glob("checkpoint-*[0-9]"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint in an output folder."""
    done = sorted(p for p in out.glob("checkpoint-*[0-9]") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def read_checkpoint(folder: Path, model: LarimarModel, optimizer: Any, scheduler: Any) -> dict[str, int]:
    """Restore weights, optimiser, scheduler and RNG from a checkpoint; returns its data position."""
    model.load_trained(folder / WEIGHTS_FILE)
    state = torch.load(folder / "optim.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    position = json.loads((folder / STATE_FILE).read_text())
    logger.info("resumed from %s at step %d", folder, position["step"])
    return position


class Trainer:
    """Trains a LarimarModel on sentence episodes as described by a TrainConfig.

    Args:
        config: the run.
        model: a model to train; None builds one from config.model (base models from packages).
        sentences: (train, held-out) sentences; None loads config.data.corpus.
    """

    def __init__(self, config: TrainConfig, model: LarimarModel | None = None,
                 sentences: tuple[list[str], list[str]] | None = None) -> None:
        from accelerate import Accelerator

        self.config = config
        self.out = Path(config.output_dir)
        precision = config.loop.mixed_precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "no"
        self.accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=config.optim.grad_accum)
        torch.manual_seed(config.seed)
        self.model = model if model is not None else LarimarModel.from_config(config.model)
        self.train_sentences, self.heldout = sentences if sentences is not None else load_corpus(config)
        self.heldout = self.heldout[: config.loop.eval_sentences]
        enc = self.model.encoder
        lookup = PooledCache(enc) if config.loop.cache_frozen_encoder and not enc.trainable else None
        dcfg = config.data
        lexical = enc.lexical if enc.lexical_head is not None else None
        sequence = enc.sequence if enc.sequence_size else None
        self.collate = Collator(enc.tokenizer, self.model.tokenizer, dcfg.episode_size, dcfg.max_tokens, lookup, lexical,
                                sequence)
        self.eval_collate = Collator(enc.tokenizer, self.model.tokenizer, dcfg.episode_size, dcfg.max_tokens,
                                     lexical=lexical, sequence=sequence)
        tok = self.model.tokenizer
        self.stream = EpisodeStream(self.train_sentences, dcfg, config.seed,
                                    length=lambda s: len(tok(s, add_special_tokens=False)["input_ids"]))
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = config.optim
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        scheduler = LambdaLR(optimizer, lr_lambda(config))
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(self.model, optimizer, scheduler)
        self.step, self.epoch, self.index = 0, 0, 0
        self.trained_params = sum(p.numel() for p in params)

    # ------------------------------------------------------------------------- bookkeeping
    @property
    def core(self) -> LarimarModel:
        """The model without distributed wrappers."""
        return self.accelerator.unwrap_model(self.model)

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def save_checkpoint(self) -> Path:
        """Write checkpoint-STEP/ and prune old ones; returns its folder."""
        folder = self.out / f"checkpoint-{self.step:07d}"
        if self.accelerator.is_main_process:
            position = {"step": self.step, "epoch": self.epoch, "index": self.index}
            write_checkpoint(self.out, position, self.core, self.optimizer, self.scheduler,
                             self.config.loop.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return folder

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint in the output folder."""
        return latest_checkpoint(self.out)

    def resume(self, folder: Path) -> None:
        """Restore weights, optimiser, scheduler, RNG and data position from a checkpoint."""
        pos = read_checkpoint(folder, self.core, self.optimizer, self.scheduler)
        self.step, self.epoch, self.index = pos["step"], pos["epoch"], pos["index"]

    # ------------------------------------------------------------------------- validation
    def validate(self) -> dict[str, float]:
        """Held-out losses (through memory and plain) and copy accuracy (E = 1 and E = episode)."""
        model = self.core
        was_training = model.training
        losses = heldout_losses(model, self.heldout, self.eval_collate, self.config.data.episode_size)
        single = copy_accuracy(model, self.heldout, episode_size=1, seed=self.config.seed)
        model.train(was_training)
        return {**losses, "copy_acc": single.with_memory, "copy_acc_plain": single.without_memory, "copy_n": single.n}

    # ------------------------------------------------------------------------- the loop
    def _micro_step(self, batch: EpisodeBatch, weights: LossWeights) -> tuple[float, float, int]:
        with self.accelerator.accumulate(self.model):
            with self.accelerator.autocast():
                out = self.model(batch.to(self.accelerator.device), weights)
            self.accelerator.backward(out.loss)
            if self.accelerator.sync_gradients and self.config.optim.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.optim.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        return float(out.loss.detach()), float(out.reconstruction.detach()), out.tokens

    def train(self, resume: bool = True) -> TrainResult:
        """Run until max_steps (or max_minutes), checkpointing and validating on the way."""
        cfg = self.config
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save_yaml(self.out / "config.yaml")
        latest = self.latest_checkpoint() if resume else None
        if latest is not None:
            self.resume(latest)
        start, tokens, losses, recons = time.perf_counter(), 0, [], []
        validation = None
        stream = self.stream.iterate_from(self.epoch, self.index)
        bar = tqdm(total=cfg.loop.max_steps, initial=self.step, disable=not self.accelerator.is_main_process,
                   desc="train", dynamic_ncols=True)
        self.model.train()
        while self.step < cfg.loop.max_steps:
            weights = LossWeights(cfg.loss.autoencoding, cfg.loss.kl_weight(self.step), cfg.loss.language_model)
            for _ in range(cfg.optim.grad_accum):
                self.epoch, index, examples = next(stream)
                self.index = index + 1
                loss, recon, n = self._micro_step(self.collate(examples), weights)
                losses.append(loss)
                recons.append(recon)
                tokens += n
            self.step += 1
            elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", recon=f"{np.mean(recons[-20:]):.3f}", tok_s=f"{tokens / elapsed:.0f}")
            if self.step % cfg.loop.log_every == 0:
                window = cfg.loop.log_every * cfg.optim.grad_accum
                self._log({"step": self.step, "loss": float(np.mean(losses[-window:])),
                           "reconstruction": float(np.mean(recons[-window:])),
                           "lr": self.scheduler.get_last_lr()[0], "kl_weight": weights.kl,
                           "tokens_per_s": tokens / elapsed, "elapsed_s": elapsed, "epoch": self.epoch})
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
        if finished and self.accelerator.is_main_process:
            self.core.save_pretrained(self.out / "final")
        return TrainResult(self.step, finished, self.out, validation)

