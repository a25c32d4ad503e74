"""Linear layers of a frozen model, run on CPU through oneDNN's kernel on a prepacked weight.

A query is one sentence, 10-20 tokens. For so few rows the default float32 path of `F.linear`
uses a fraction of a core; oneDNN's kernel, given the weight reordered once into its blocked
layout, computes the same float32 product about twice as fast (docs/results.md, "The frozen
encoder multiplies by prepacked weights"). The values equal `F.linear`'s up to rounding (the
summation order differs, as it does between thread counts).

Used for the frozen encoder body, whose weights never change (`SentenceEncoder`). Anything
else falls back to `F.linear`: gradients, other devices or dtypes, a torch without oneDNN.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@functools.cache
def available() -> bool:
    """Whether this torch has oneDNN and its prepacked linear kernel (asked once)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight"))


class PackedLinear(nn.Linear):
    """An `nn.Linear` that, without gradients and on CPU in float32, multiplies by a prepacked
    copy of its weight. The copy is made on first use and remade when the weight is changed in
    place, replaced or moved; it is not a parameter or buffer, so state dicts are unchanged."""

    _packed: tuple[tuple[int, int, torch.device], Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if (x.device.type != "cpu" or w.device.type != "cpu" or x.dtype != torch.float32
                or w.dtype != torch.float32 or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
                or not available()):
            return F.linear(x, w, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "none", [], "")

    def packed_weight(self) -> Tensor:
        """The weight in oneDNN's layout, remade if the weight changed since it was packed."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.device)
        if self._packed is None or self._packed[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach()))
        return self._packed[1]

    def __getstate__(self) -> dict:
        """The state without the packed copy (oneDNN's layout cannot be copied or saved; it is
        remade on first use), so the layer deep-copies and pickles like an `nn.Linear`."""
        state = dict(super().__getstate__())
        state.pop("_packed", None)
        return state

    @classmethod
    def sharing(cls, linear: nn.Linear) -> PackedLinear:
        """A PackedLinear holding `linear`'s own parameters (not copies)."""
        packed = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        packed.weight = linear.weight
        packed.bias = linear.bias
        packed.train(linear.training)
        return packed


def pack_linears(module: nn.Module) -> int:
    """Replace every plain `nn.Linear` inside `module` by a `PackedLinear` on the same
    parameters; returns how many were replaced. State dict keys and values are unchanged."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear.sharing(child))
                count += 1
    return count
