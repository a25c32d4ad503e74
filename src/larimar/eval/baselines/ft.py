"""FT-L: constrained fine-tuning of one MLP output matrix (Zhu et al. 2020; ROME's FT-L).

For an edit (prompt p, target o*), minimise the target NLL over the down_proj weight W of one
layer, keeping the change inside an L-infinity ball:

    min_W  -log P_W(o* | p)    subject to    ||W - W_0||_inf <= eps

with Adam; after every step W is projected back onto the ball (clamped element-wise to
[W_0 - eps, W_0 + eps]). Several cases in one ``edit`` call are applied one after another.

Example:
    >>> editor = get_editor("ft", model=model, tokenizer=tok, layer=8)  # doctest: +SKIP
    >>> editor.edit([case]); editor.score([case.prompt], [case.target_new])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from larimar.eval.baselines.base import (
    WeightEditor,
    check_positive,
    down_proj,
    make_config,
    resolve_layer,
    target_batch,
    target_nll,
    trainable,
)
from larimar.eval.datasets import EditCase

logger = logging.getLogger(__name__)


@dataclass
class FTConfig:
    """FT-L hyperparameters. Paper values: ROME's FT-L baseline on GPT-2 XL (Meng et al. 2022,
    appendix: 25 Adam steps, lr 5e-4, L-inf bound 5e-4, one MLP layer). Our choices are for
    SmolLM2-135M (30 layers), tuned on 20 CounterFact validation cases (see the report)."""

    layer: int | None = None
    """Edited layer; ``None`` = ``int(layer_fraction * L)`` (SmolLM2: layer 6)."""
    layer_fraction: float = 0.2
    """Depth used when ``layer`` is None (an early-middle layer, like ROME's)."""
    lr: float = 5e-4
    """Adam learning rate (paper 5e-4)."""
    norm_constraint: float = 5e-3
    """L-inf bound eps on W - W_0 (paper 5e-4 for GPT-2 XL; SmolLM2 needs a looser bound)."""
    num_steps: int = 25
    """Maximum Adam steps per edit (paper 25)."""
    min_loss: float = 1e-2
    """Stop early once the target NLL (nats/token) is below this."""

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_positive("norm_constraint", self.norm_constraint)
        check_positive("num_steps", self.num_steps)
        check_positive("min_loss", self.min_loss, allow_zero=True)
        if not 0 <= self.layer_fraction < 1:
            raise ValueError(f"layer_fraction must be in [0, 1); got {self.layer_fraction}")


class FineTuneEditor(WeightEditor):
    """FT-L on one layer's ``mlp.down_proj`` weight; ``reset`` restores it exactly.

    Args:
        config: an :class:`FTConfig`; or pass its fields as keyword arguments.
        model, tokenizer, load_decoder, batch_size: as for :class:`UneditedEditor`.
    """

    name = "ft"

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        load_decoder: Any = None,
        batch_size: int = 16,
        config: FTConfig | None = None,
        **hparams: Any,
    ) -> None:
        self.hparams = make_config(FTConfig, config, hparams, "ft")
        super().__init__(
            model=model, tokenizer=tokenizer, load_decoder=load_decoder, batch_size=batch_size
        )
        self.layer = resolve_layer(self.model, self.hparams.layer, self.hparams.layer_fraction)
        self._track(down_proj(self.model, self.layer).weight)

    def _apply(self, cases: Sequence[EditCase]) -> None:
        for case in cases:
            self._edit_one(case)

    def _edit_one(self, case: EditCase) -> None:
        hp, weight = self.hparams, self._weight
        assert weight is not None and self._original is not None
        batch = target_batch(self.tokenizer, [case.prompt], case.target_new, weight.device)
        # the projection is around the weights before this edit (sequential edits accumulate)
        low, high = weight.detach() - hp.norm_constraint, weight.detach() + hp.norm_constraint
        opt = torch.optim.Adam([weight], lr=hp.lr)
        with trainable(weight):
            loss, steps = self._optimise(batch, opt, low, high)
        logger.debug("ft case %s: loss %.4f after %d steps", case.case_id, loss, steps)

    def _optimise(self, batch: Any, opt: torch.optim.Optimizer, low: torch.Tensor,
                  high: torch.Tensor) -> tuple[float, int]:
        """Adam steps with projection onto [low, high]; returns the last loss and step count."""
        weight, hp = self._weight, self.hparams
        assert weight is not None
        loss = float("nan")
        for step in range(hp.num_steps):
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss_t = target_nll(logits, batch.labels)
            loss = loss_t.item()
            if loss < hp.min_loss:
                return loss, step
            (grad,) = torch.autograd.grad(loss_t, [weight])
            weight.grad = grad
            opt.step()
            weight.grad = None
            with torch.no_grad():
                weight.copy_(torch.maximum(torch.minimum(weight, high), low))
        return loss, hp.num_steps

    def config(self) -> dict[str, Any]:
        return {**super().config(), **asdict(self.hparams), "layer": self.layer}
