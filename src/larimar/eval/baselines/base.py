"""Shared pieces of the weight-editing baselines: layer lookup, target batches, configs.

Symbols used across ``ft.py``, ``rome.py`` and ``grace.py``:

* ``L``: number of decoder layers; ``l``: the edited layer.
* ``H``: hidden size (down_proj output); ``I``: MLP intermediate size (down_proj input).
* ``B``: sequences in a batch; ``T``: padded length; ``V``: vocabulary size.

Any Hugging Face Llama-family causal LM works: the decoder layers are found at
``model.model.layers`` and each layer's MLP output matrix at ``layer.mlp.down_proj``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from larimar.eval.baselines.unedited import UneditedEditor
from larimar.eval.datasets import EditCase
from larimar.eval.lm import _common_prefix, _ids, _pad_id, encode_pairs

logger = logging.getLogger(__name__)

C = TypeVar("C")


def make_config(cls: type[C], config: C | None, overrides: dict[str, Any], method: str) -> C:
    """``config``, or ``cls(**overrides)``; unknown names raise a ValueError listing the known ones."""
    if config is not None and overrides:
        raise ValueError(f"pass either a {cls.__name__} or keyword hyperparameters, not both")
    if config is not None:
        return config
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(
            f"unknown {method} hyperparameter(s) {unknown}; known: {', '.join(known)}"
        )
    return cls(**overrides)


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is > 0 (or >= 0)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}; got {value}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Llama-family causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no model.layers; the baselines support Llama-family "
            "causal LMs (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, ...)"
        )
    return layers


def resolve_layer(model: nn.Module, layer: int | None, fraction: float) -> int:
    """``layer`` checked against the model's depth; ``None`` picks ``int(fraction * L)``."""
    n = len(decoder_layers(model))
    if layer is None:
        return min(n - 1, int(fraction * n))
    if not 0 <= layer < n:
        raise ValueError(f"layer {layer} is out of range; the model has {n} layers (0-{n - 1})")
    return layer


def layer_module(model: nn.Module, layer: int, name: str) -> nn.Module:
    """``"mlp"`` or ``"down_proj"`` (the MLP output matrix) of decoder layer ``layer``."""
    mlp = decoder_layers(model)[layer].mlp
    if name == "mlp":
        return mlp
    if name == "down_proj":
        return mlp.down_proj
    raise ValueError(f"unknown module {name!r}; choose 'mlp' or 'down_proj'")


def down_proj(model: nn.Module, layer: int) -> nn.Linear:
    """The MLP output matrix of ``layer``: ``y = W k`` with ``W`` (H, I)."""
    module = layer_module(model, layer, "down_proj")
    if not isinstance(module, nn.Linear):
        raise ValueError(f"layer {layer}'s mlp.down_proj is {type(module).__name__}, not Linear")
    return module


@dataclass
class TargetBatch:
    """Prompts joined with one target, right-padded, with the target tokens marked.

    Attributes:
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 on real tokens.
        labels: (B, T) the id to predict at each position from the previous one; -100 on
            positions that are not target tokens.
        prompt_last: (B,) index of each prompt's last token (the first target token follows).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_last: torch.Tensor


def target_batch(
    tokenizer: Any, prompts: Sequence[str], target: str, device: torch.device
) -> TargetBatch:
    """Encode ``prompt + " " + target`` for every prompt (see :func:`larimar.eval.lm.encode_pairs`)."""
    pairs = encode_pairs(tokenizer, prompts, [target] * len(prompts))
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), _pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, (ids, start) in enumerate(pairs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, start : len(ids)] = input_ids[i, start : len(ids)]
    last = torch.tensor([start - 1 for _, start in pairs])
    return TargetBatch(input_ids.to(device), mask.to(device), labels.to(device), last.to(device))


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of each sequence's mean target-token NLL.

    Args:
        logits: (B, T, V) model outputs.
        labels: (B, T) as in :class:`TargetBatch`.

    Returns:
        () scalar loss.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    gold = labels[:, 1:]  # (B, T-1)
    mask = gold != -100
    tok = logp.gather(-1, gold.clamp(min=0)[..., None]).squeeze(-1)  # (B, T-1)
    per_seq = -(tok * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
    return per_seq.mean()


def subject_last_index(tokenizer: Any, text: str, subject: str, fallback: int) -> int:
    """Token index of the last token of the first ``subject`` occurrence in ``text``.

    Returns ``fallback`` (with a warning) when the subject is empty or absent.
    """
    pos = text.find(subject) if subject else -1
    if pos < 0:
        logger.warning("subject %r not in %r; using token %d", subject, text, fallback)
        return fallback
    n = _common_prefix(_ids(tokenizer, text[: pos + len(subject)]), _ids(tokenizer, text))
    return max(n, 1) - 1


@contextlib.contextmanager
def trainable(param: nn.Parameter) -> Iterator[nn.Parameter]:
    """Temporarily set ``param.requires_grad`` (the decoder may be frozen by its owner)."""
    before = param.requires_grad
    param.requires_grad_(True)
    try:
        yield param
    finally:
        param.requires_grad_(before)


class WeightEditor(UneditedEditor):
    """An editor that changes one weight matrix of the shared decoder in place.

    Subclasses implement ``_apply(cases)``. ``reset`` copies the saved original back, so the
    decoder is bit-for-bit unedited afterwards (other editors may share the same model object).
    The weight change of several edits is not separable, so ``forget`` replays: it restores the
    original weight and applies every remaining edit again, in its original order and grouping.
    The result is exactly the model that never saw the forgotten edits, at the cost of one edit
    per retained fact (the forgetting protocol reports that time).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._weight: nn.Parameter | None = None
        self._original: torch.Tensor | None = None
        self._log: list[list[EditCase]] = []  # the edit calls since the last reset, in order

    def _track(self, weight: nn.Parameter) -> None:
        """Remember ``weight``'s current value as the unedited state."""
        self._weight = weight
        self._original = weight.detach().clone()

    def _apply(self, cases: Sequence[EditCase]) -> None:
        raise NotImplementedError

    def edit(self, cases: Sequence[EditCase]) -> None:
        if not cases:
            return
        self._apply(cases)
        self._log.append(list(cases))

    def forget(self, case_ids: Sequence[str]) -> None:
        """Restore the unedited weight and replay the edits of every other case.

        Ids never edited are ignored (and cost nothing).
        """
        gone = set(case_ids)
        if not any(c.case_id in gone for call in self._log for c in call):
            return
        kept = [[c for c in call if c.case_id not in gone] for call in self._log]
        self.reset()
        for call in kept:
            self.edit(call)

    @torch.no_grad()
    def reset(self) -> None:
        self._log.clear()
        if self._weight is not None and self._original is not None:
            self._weight.copy_(self._original)

