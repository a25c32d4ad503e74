"""ROME: rank-one model editing of one MLP output matrix (Meng et al. 2022).

Symbols: ``W`` (H, I) the down_proj weight of layer l (``h = W k``); ``k*`` (I,) the key of the
subject; ``v*`` (H,) the value that makes the model say the new object; ``C = E[k k^T]``
(I, I) the second moment of keys over generic text (:mod:`larimar.eval.baselines.stats`).

1. Key: ``k* = mean_j k(x_j + p)`` -- the down_proj input at the subject's last token of the
   rewrite prompt p behind a few context prefixes x_j. The paper samples the prefixes from the
   model; we use a fixed handful of generic prefixes (deterministic and fast).
2. Value: ``v* = h_0 + delta`` where h_0 is the MLP output at the subject's last token of p and
   delta, added to that MLP output in every prompt, minimises (paper eq. 4)

       mean_j -log P(o* | x_j + p)  +  kl_factor * KL(P(. | s is a) || P_delta(. | s is a))
       + weight_decay * ||delta||^2 / ||h_0||^2,

   with ``||delta|| <= clamp_norm_factor * ||h_0||`` after each Adam step.
3. Update (paper eq. 2): ``W' = W + (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)``, so that
   ``W' k* = v*`` and ``W' k = W k`` for every k with ``k^T C^-1 k* = 0``.

Example:
    >>> editor = get_editor("rome", model=model, tokenizer=tok,
    ...                     stats_corpus="runs/corpus/train.jsonl")  # doctest: +SKIP
    >>> editor.edit([case])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from larimar.eval.baselines import stats
from larimar.eval.baselines.base import (
    WeightEditor,
    check_positive,
    down_proj,
    make_config,
    resolve_layer,
    subject_last_index,
    target_batch,
    target_nll,
)
from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor, EditorOptions, decoder_kwargs
from larimar.eval.lm import _ids, _pad_id
from larimar.train.corpus import load_sentences

logger = logging.getLogger(__name__)

DEFAULT_PREFIXES = (
    "",
    "The following is true. ",
    "Here is a short note. ",
    "According to the encyclopedia, ",
    "I read this in the news today. ",
)
"""Context prefixes x_j for the key and the value (the paper samples ~20 from the model)."""


@dataclass
class ROMEConfig:
    """ROME hyperparameters. Paper values: GPT-2 XL (48 layers) edited at layer 17, v* by 20
    Adam steps at lr 0.5, KL factor 0.0625, weight decay 0.5, norm clamp 4, C from 100k
    Wikipedia samples. Our choices are for SmolLM2-135M (30 layers) on a shared CPU."""

    layer: int | None = None
    """Edited layer; ``None`` = ``int(layer_fraction * L)`` (SmolLM2: layer 6)."""
    layer_fraction: float = 0.2
    """Depth used when ``layer`` is None: early-middle, where causal tracing puts subject
    recall (GPT-2 XL 17/48, GPT-J 5/28, Llama-7B 5/32 in later work)."""
    context_prefixes: tuple[str, ...] = DEFAULT_PREFIXES
    """Fixed prefixes x_j (paper: sampled); ``""`` keeps the bare prompt."""
    kl_prompt: str = "{} is a"
    """Essence-preservation prompt, ``{}`` = subject (paper)."""
    v_lr: float = 0.5
    """Adam learning rate of delta (paper 0.5)."""
    v_num_steps: int = 20
    """Maximum Adam steps for delta (paper 20)."""
    v_min_loss: float = 5e-2
    """Stop once the mean target NLL is below this (paper 5e-2)."""
    kl_factor: float = 0.0625
    """Weight of the KL term (paper 0.0625)."""
    v_weight_decay: float = 0.5
    """Weight of ||delta||^2 / ||h_0||^2 (paper 0.5)."""
    clamp_norm_factor: float = 4.0
    """``||delta|| <= clamp_norm_factor * ||h_0||`` (paper 4)."""
    stats_samples: int = 2000
    """Sentences for C (paper 100k Wikipedia samples; 2k sentences ~ 50k tokens on CPU)."""
    mom2_ridge: float = 0.0
    """Added to C's diagonal, times mean(diag C), before solving (0 = plain ROME)."""

    def __post_init__(self) -> None:
        for name in ("v_lr", "v_num_steps", "clamp_norm_factor", "stats_samples"):
            check_positive(name, getattr(self, name))
        for name in ("v_min_loss", "kl_factor", "v_weight_decay", "mom2_ridge"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if not 0 <= self.layer_fraction < 1:
            raise ValueError(f"layer_fraction must be in [0, 1); got {self.layer_fraction}")
        if not self.context_prefixes:
            raise ValueError("context_prefixes is empty; pass at least ('',)")
        self.context_prefixes = tuple(self.context_prefixes)
        if self.kl_prompt.count("{}") != 1:
            raise ValueError(f"kl_prompt needs exactly one '{{}}' for the subject; got {self.kl_prompt!r}")


def rank_one_update(
    weight: torch.Tensor, mom2: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """ROME's closed form ``W + (v - W k) (C^-1 k)^T / ((C^-1 k)^T k)``, computed in float64.

    Args:
        weight: (H, I) the current W.
        mom2: (I, I) C, symmetric positive definite.
        key: (I,) k*.
        value: (H,) v*.

    Returns:
        (H, I) the new W, in ``weight``'s dtype.
    """
    w, k, v = weight.double(), key.double(), value.double()
    u = torch.linalg.solve(mom2.double(), k)  # (I,) C^-1 k*
    new = w + torch.outer(v - w @ k, u) / (u @ k)
    return new.to(weight.dtype)


@dataclass
class RankOneEdit:
    """What one ROME edit wrote: ``W' key = value`` at ``layer``."""

    case_id: str
    key: torch.Tensor
    value: torch.Tensor


def _pad_rows(rows: Sequence[Sequence[int]], pad: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r))
        mask[i, : len(r)] = 1
    return ids, mask


class ROMEEditor(WeightEditor):
    """ROME on one layer's ``mlp.down_proj``; ``reset`` restores the weight exactly.

    The second moment C is computed (or loaded from the cache) at construction, so edits are
    timed without it. Several cases in one ``edit`` call are applied one after another.

    Args:
        stats_sentences: text for C; or
        stats_corpus: a corpus JSONL (``larimar.train.corpus.build_corpus``), of which the first
            ``stats_samples`` sentences are used.
        cache_dir: root of the statistics cache (default ``$LARIMAR_CACHE`` or ~/.cache/larimar).
        config: a :class:`ROMEConfig`; or pass its fields as keyword arguments.
        model, tokenizer, load_decoder, batch_size: as for :class:`UneditedEditor`.
    """

    name = "rome"

    @classmethod
    def from_options(cls, options: EditorOptions) -> Editor:
        """ROME with its key statistics from ``options.stats_corpus`` (computed once, cached)."""
        if options.stats_corpus is None or not Path(options.stats_corpus).is_file():
            raise ValueError(f"rome needs a sentence corpus for its statistics; no file at {options.stats_corpus} "
                             "(build one with `larimar corpus --out runs/corpus`)")
        return cls(stats_corpus=Path(options.stats_corpus), **decoder_kwargs(options))

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        load_decoder: Any = None,
        batch_size: int = 16,
        stats_sentences: Sequence[str] | None = None,
        stats_corpus: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        config: ROMEConfig | None = None,
        **hparams: Any,
    ) -> None:
        self.hparams = make_config(ROMEConfig, config, hparams, "rome")
        if (stats_sentences is None) == (stats_corpus is None):
            raise ValueError(
                "rome needs text for its second-moment statistics: pass exactly one of "
                "stats_sentences=[...] or stats_corpus=PATH (a JSONL from "
                "larimar.train.corpus.build_corpus, e.g. runs/corpus/train.jsonl)"
            )
        super().__init__(
            model=model, tokenizer=tokenizer, load_decoder=load_decoder, batch_size=batch_size
        )
        self.layer = resolve_layer(self.model, self.hparams.layer, self.hparams.layer_fraction)
        self.module = down_proj(self.model, self.layer)
        self._track(self.module.weight)
        if stats_corpus is not None:
            stats_sentences = load_sentences(Path(stats_corpus))
        sample = list(stats_sentences or [])[: self.hparams.stats_samples]
        self.stats_source = str(stats_corpus) if stats_corpus is not None else "sentences"
        mom2 = stats.second_moment(self.model, self.tokenizer, self.layer, sample, cache_dir)
        if self.hparams.mom2_ridge:
            mom2 = mom2 + self.hparams.mom2_ridge * mom2.diagonal().mean() * torch.eye(
                mom2.shape[0], dtype=mom2.dtype, device=mom2.device
            )
        self.mom2 = mom2
        self.n_stats_sentences = len(sample)
        self.updates: list[RankOneEdit] = []

    def reset(self) -> None:
        super().reset()
        self.updates.clear()

    def _apply(self, cases: Sequence[EditCase]) -> None:
        for case in cases:
            key = self.compute_key(case)
            value = self.compute_value(case)
            with torch.no_grad():
                self.module.weight.copy_(rank_one_update(self.module.weight, self.mom2, key, value))
            self.updates.append(RankOneEdit(case.case_id, key, value))

    def _prompts(self, case: EditCase) -> list[str]:
        return [prefix + case.prompt for prefix in self.hparams.context_prefixes]

    def _subject_positions(self, texts: Sequence[str], subject: str) -> list[int]:
        return [
            subject_last_index(self.tokenizer, t, subject, len(_ids(self.tokenizer, t)) - 1)
            for t in texts
        ]

    @torch.no_grad()
    def compute_key(self, case: EditCase) -> torch.Tensor:
        """k* (I,): mean down_proj input at the subject's last token over the prefixes."""
        prompts = self._prompts(case)
        rows = [_ids(self.tokenizer, p) for p in prompts]
        ids, mask = _pad_rows(rows, _pad_id(self.tokenizer), max(map(len, rows)))
        pos = torch.tensor(self._subject_positions(prompts, case.subject))
        captured: list[torch.Tensor] = []

        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured.append(args[0][torch.arange(len(rows)), pos.to(args[0].device)])

        handle = self.module.register_forward_pre_hook(hook)
        try:
            device = self.module.weight.device
            self.model(input_ids=ids.to(device), attention_mask=mask.to(device))
        finally:
            handle.remove()
        return captured[0].mean(0)  # (I,)

    def compute_value(self, case: EditCase) -> torch.Tensor:
        """v* (H,): the MLP output at the subject that makes the model say ``target_new``."""
        hp = self.hparams
        device = self.module.weight.device
        prompts = self._prompts(case)
        batch = target_batch(self.tokenizer, prompts, case.target_new, device)
        kl_text = hp.kl_prompt.format(case.subject)
        kl_row = _ids(self.tokenizer, kl_text)
        rows = [r[m.bool()].tolist() for r, m in zip(batch.input_ids, batch.attention_mask)]
        width = max(batch.input_ids.shape[1], len(kl_row))
        ids, mask = _pad_rows([*rows, kl_row], _pad_id(self.tokenizer), width)
        ids, mask = ids.to(device), mask.to(device)
        labels = F.pad(batch.labels, (0, width - batch.labels.shape[1]), value=-100)
        pos = torch.tensor(self._subject_positions([*prompts, kl_text], case.subject), device=device)
        rows_idx = torch.arange(len(pos), device=device)
        kl_last = len(kl_row) - 1

        delta = torch.zeros(self.module.out_features, dtype=self.module.weight.dtype,
                            device=device, requires_grad=True)
        h0: list[torch.Tensor] = []

        def hook(_m: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            if not h0:
                h0.append(out[0, pos[0]].detach().clone())  # bare prompt (first prefix "")
            one_hot = torch.zeros(out.shape[:2], dtype=out.dtype, device=out.device)
            one_hot[rows_idx, pos] = 1
            return out + one_hot[..., None] * delta  # (B, T, H)

        handle = self.module.register_forward_hook(hook)
        opt = torch.optim.Adam([delta], lr=hp.v_lr)
        kl_ref: torch.Tensor | None = None
        try:
            for step in range(hp.v_num_steps):
                logits = self.model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
                nll = target_nll(logits[:-1], labels)
                kl_logp = torch.log_softmax(logits[-1, kl_last].float(), dim=-1)  # (V,)
                if kl_ref is None:
                    kl_ref = kl_logp.detach()  # delta = 0 on the first step: the unedited model
                kl = F.kl_div(kl_logp, kl_ref, log_target=True, reduction="sum")
                decay = hp.v_weight_decay * delta.float().norm() ** 2 / h0[0].float().norm() ** 2
                loss = nll + hp.kl_factor * kl + decay
                logger.debug("rome step %d: nll %.4f kl %.4f decay %.4f", step, nll.item(),
                             kl.item(), decay.item())
                if nll.item() < hp.v_min_loss:
                    break
                (grad,) = torch.autograd.grad(loss, [delta])
                delta.grad = grad
                opt.step()
                with torch.no_grad():
                    limit = hp.clamp_norm_factor * h0[0].norm()
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
        finally:
            handle.remove()
        return (h0[0] + delta).detach()

    def config(self) -> dict[str, Any]:
        return {**super().config(), **asdict(self.hparams), "layer": self.layer,
                "stats_source": self.stats_source, "n_stats_sentences": self.n_stats_sentences}
