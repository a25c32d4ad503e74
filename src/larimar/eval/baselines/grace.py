"""GRACE: a key-value codebook with deferral radii at one layer (Hartvigsen et al. 2023).

The wrapped module (layer l's MLP, or its down_proj) keeps its weights. A codebook holds
entries (key k_i, value v_i, radius eps_i, label y_i):

* Inference, per token: with ``x`` the module's input at that token and
  ``i = argmin_i ||x - k_i||``, the module's output there becomes ``v_i`` if
  ``||x - k_i|| <= eps_i``; otherwise the output is left exactly as it was.
* Editing (prompt p, label y = target_new): the key is the module input at p's last token.
  With d the distance to the nearest entry i (paper, Alg. 1):
  no entry or ``d > eps_i + eps_init`` -> add (key, value, eps_init, y);
  ``y == y_i`` -> expand: ``eps_i = max(eps_i, d)`` (the existing value serves the new key);
  ``y != y_i`` -> split: ``eps_i = d / 2`` and add (key, value, d / 2, y).
  A new value starts at the module's original output at that token and is trained with Adam so
  that, replacing the output there, the model produces ``target_new`` after p.

Because the check is per token, a query hits the codebook exactly where its own activation is
close to an edited prompt's last token (teacher-forced scoring of ``prompt + target`` and
cached greedy generation both see that token). ``forget`` drops the entries a case created and
shrinks radii it expanded.

Example:
    >>> editor = get_editor("grace", model=model, tokenizer=tok, epsilon_init=0.5)  # doctest: +SKIP
    >>> editor.edit([case]); editor.forget([case.case_id])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from larimar.eval.baselines.base import (
    check_positive,
    layer_module,
    make_config,
    resolve_layer,
    target_batch,
    target_nll,
)
from larimar.eval.baselines.unedited import UneditedEditor
from larimar.eval.datasets import EditCase

logger = logging.getLogger(__name__)

GraceModule = Literal["mlp", "down_proj"]


@dataclass
class GRACEConfig:
    """GRACE hyperparameters. Paper values (GPT-2 XL): layer 35 of 48 (an MLP linear), initial
    radius eps_init = 1.0 (swept 0.1-3.0), value Adam lr 1.0, 100 steps. Our choices are for
    SmolLM2-135M, whose MLP inputs (post-RMSNorm) have norms of about 3-4."""

    layer: int | None = None
    """Wrapped layer; ``None`` = ``int(layer_fraction * L)`` (SmolLM2: layer 21)."""
    layer_fraction: float = 0.7
    """Depth used when ``layer`` is None (the paper wraps a late layer)."""
    module: GraceModule = "mlp"
    """``"mlp"``: keys are the MLP input (H), values its output (H); ``"down_proj"``: keys are
    the MLP activations (I), values the down_proj output (H)."""
    epsilon_init: float = 0.5
    """Initial deferral radius (Euclidean, in key units; paper 1.0 on GPT-2 XL's scale). On
    SmolLM2's layer-21 MLP inputs (norms ~4) paraphrases sit 2.6-4.2 from their rewrite
    prompt and the nearest CounterFact neighbourhood prompt we saw 0.9, so 0.5 defers only to
    near-identical contexts."""
    value_lr: float = 1.0
    """Adam learning rate of a new value (paper 1.0)."""
    value_steps: int = 100
    """Maximum Adam steps per new value (paper 100)."""
    min_loss: float = 1e-2
    """Stop training a value once the target NLL (nats/token) is below this."""

    def __post_init__(self) -> None:
        check_positive("epsilon_init", self.epsilon_init)
        check_positive("value_lr", self.value_lr)
        check_positive("value_steps", self.value_steps)
        check_positive("min_loss", self.min_loss, allow_zero=True)
        if self.module not in ("mlp", "down_proj"):
            raise ValueError(f"module must be 'mlp' or 'down_proj'; got {self.module!r}")
        if not 0 <= self.layer_fraction < 1:
            raise ValueError(f"layer_fraction must be in [0, 1); got {self.layer_fraction}")


@dataclass
class CodebookEntry:
    """One GRACE entry: replaces the output by ``value`` within ``epsilon`` of ``key``.

    Attributes:
        key: (D_in,) module input of the creating edit's last prompt token.
        value: (D_out,) trained replacement output.
        epsilon: current deferral radius.
        label: the edit's target_new.
        case_id: the case that created the entry.
        covers: other cases (same label) whose keys the entry was expanded to reach, with
            their distances.
        base_epsilon: the radius before any expansion (after splits).
    """

    key: torch.Tensor
    value: torch.Tensor
    epsilon: float
    label: str
    case_id: str
    base_epsilon: float
    covers: dict[str, float] = field(default_factory=dict)


class GRACEEditor(UneditedEditor):
    """GRACE codebook at one layer; ``forget`` removes entries, ``reset`` empties it.

    Args:
        config: a :class:`GRACEConfig`; or pass its fields as keyword arguments.
        model, tokenizer, load_decoder, batch_size: as for :class:`UneditedEditor`.
    """

    name = "grace"

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        load_decoder: Any = None,
        batch_size: int = 16,
        config: GRACEConfig | None = None,
        **hparams: Any,
    ) -> None:
        self.hparams = make_config(GRACEConfig, config, hparams, "grace")
        super().__init__(
            model=model, tokenizer=tokenizer, load_decoder=load_decoder, batch_size=batch_size
        )
        self.layer = resolve_layer(self.model, self.hparams.layer, self.hparams.layer_fraction)
        self.module = layer_module(self.model, self.layer, self.hparams.module)
        self.codebook: list[CodebookEntry] = []
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._override: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ---- the wrapped forward ----------------------------------------------------------------

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys (E, D_in), values (E, D_out), radii (E,) of the codebook, stacked once."""
        if self._stacked is None:
            keys = torch.stack([e.key for e in self.codebook])
            values = torch.stack([e.value for e in self.codebook])
            eps = torch.tensor([e.epsilon for e in self.codebook], dtype=torch.float64,
                               device=keys.device)
            self._stacked = (keys, values, eps)
        return self._stacked

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest entry of each row of ``x`` (N, D_in) and whether it is within its radius.

        Returns:
            ``(index (N,), hit (N,) bool)``.
        """
        keys, _, eps = self._tables()
        dist = torch.cdist(x.double(), keys.double(),
                           compute_mode="donot_use_mm_for_euclid_dist")  # (N, E)
        d, idx = dist.min(-1)
        return idx, d <= eps[idx]

    def _hook(self, _m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> Any:
        x = args[0]  # (B, T, D_in)
        new = out
        if self.codebook:
            _, values, _ = self._tables()
            idx, hit = self.lookup(x.reshape(-1, x.shape[-1]))  # (B*T,)
            if bool(hit.any()):
                flat = out.reshape(-1, out.shape[-1])  # (B*T, D_out)
                new = torch.where(hit[:, None], values[idx].to(out.dtype), flat).view_as(out)
        if self._override is not None:  # training a value: force it at the given tokens
            rows, pos, value = self._override
            mask = torch.zeros(out.shape[:2], dtype=out.dtype, device=out.device)
            mask[rows, pos] = 1
            new = new * (1 - mask[..., None]) + mask[..., None] * value
        return None if new is out else new

    def _ensure_hook(self) -> None:
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)

    # ---- editing -----------------------------------------------------------------------------

    @torch.no_grad()
    def _key_and_output(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Module input (D_in,) and original output (D_out,) at ``prompt``'s last token."""
        ids = torch.tensor([self.tokenizer(prompt)["input_ids"]],
                           device=next(self.model.parameters()).device)
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def grab(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen.append((args[0][0, -1].clone(), out[0, -1].clone()))

        saved, self._handle = self._handle, None
        if saved is not None:
            saved.remove()  # the original output, not a codebook value
        handle = self.module.register_forward_hook(grab)
        try:
            self.model(input_ids=ids)
        finally:
            handle.remove()
            if saved is not None:
                self._ensure_hook()
        return seen[0]

    def _train_value(self, case: EditCase, init: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        batch = target_batch(self.tokenizer, [case.prompt], case.target_new, init.device)
        value = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([value], lr=hp.value_lr)
        rows = torch.arange(batch.input_ids.shape[0], device=init.device)
        self._ensure_hook()
        self._override = (rows, batch.prompt_last, value)
        try:
            for step in range(hp.value_steps):
                logits = self.model(input_ids=batch.input_ids,
                                    attention_mask=batch.attention_mask).logits
                loss = target_nll(logits, batch.labels)
                if loss.item() < hp.min_loss:
                    break
                (grad,) = torch.autograd.grad(loss, [value])
                value.grad = grad
                opt.step()
            logger.debug("grace case %s: loss %.4f after %d steps", case.case_id, loss.item(), step)
        finally:
            self._override = None
        return value.detach()

    def _nearest(self, key: torch.Tensor) -> tuple[int, float] | None:
        if not self.codebook:
            return None
        keys, _, _ = self._tables()
        d = (keys.double() - key.double()).norm(dim=-1)  # (E,)
        i = int(d.argmin())
        return i, float(d[i])

    def _add(self, case: EditCase, key: torch.Tensor, output: torch.Tensor, eps: float) -> None:
        value = self._train_value(case, output)
        self.codebook.append(CodebookEntry(key, value, eps, case.target_new, case.case_id, eps))
        self._stacked = None

    def edit(self, cases: Sequence[EditCase]) -> None:
        for case in cases:
            self._edit_one(case)

    def _edit_one(self, case: EditCase) -> None:
        eps0 = self.hparams.epsilon_init
        key, output = self._key_and_output(case.prompt)
        near = self._nearest(key)
        if near is None or near[1] > self.codebook[near[0]].epsilon + eps0:
            self._add(case, key, output, eps0)
            return
        i, d = near
        entry = self.codebook[i]
        if entry.label == case.target_new:  # expand
            entry.covers[case.case_id] = d
            entry.epsilon = max(entry.epsilon, d)
        else:  # split: both radii become d / 2
            entry.base_epsilon = entry.epsilon = d / 2
            dropped = [c for c, dc in entry.covers.items() if dc > d / 2]
            entry.covers = {c: dc for c, dc in entry.covers.items() if dc <= d / 2}
            if dropped:
                logger.warning("grace split left cases %s outside their entry", dropped)
            self._add(case, key, output, d / 2)
        self._stacked = None

    def forget(self, case_ids: Sequence[str]) -> None:
        """Drop the entries these cases created and shrink radii they expanded."""
        gone = set(case_ids)
        kept: list[CodebookEntry] = []
        for entry in self.codebook:
            if entry.case_id in gone:
                if set(entry.covers) - gone:
                    logger.warning("forgetting case %s also drops cases %s that shared its entry",
                                   entry.case_id, sorted(set(entry.covers) - gone))
                continue
            entry.covers = {c: d for c, d in entry.covers.items() if c not in gone}
            entry.epsilon = max([entry.base_epsilon, *entry.covers.values()])
            kept.append(entry)
        self.codebook = kept
        self._stacked = None
        if not self.codebook:
            self._remove_hook()

    def _remove_hook(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def reset(self) -> None:
        self.codebook.clear()
        self._stacked = None
        self._override = None
        self._remove_hook()

    def config(self) -> dict[str, Any]:
        return {**super().config(), **asdict(self.hparams), "layer": self.layer}
