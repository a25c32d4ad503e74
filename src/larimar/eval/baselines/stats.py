"""Second-moment statistics of an MLP's down_proj inputs, computed once and cached on disk.

ROME's update needs ``C = E[k k^T]`` (I, I), the uncentred covariance of the keys ``k`` that
enter the edited layer's down_proj, over generic text (the paper: 100k Wikipedia samples).
:func:`second_moment` computes it from the given sentences with one truncated forward pass per
batch (layers above the edited one are skipped) and caches it as safetensors under
``{cache_dir}/rome-stats/``, keyed by the model name, a hash of the layer's weights, the layer,
the sample count and a hash of the sentences; later calls load the file.

Example:
    >>> C = second_moment(model, tok, layer=6, sentences=load_sentences(path)[:2000])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from larimar.eval.baselines.base import down_proj
from larimar.eval.lm import _pad_id
from larimar.model.assets import default_cache_dir

logger = logging.getLogger(__name__)

STATS_SUBDIR = "rome-stats"


class _StopForward(Exception):
    """Raised by a hook once the wanted activations are captured (skips the upper layers)."""


@torch.no_grad()
def compute_second_moment(
    model: nn.Module,
    tokenizer: Any,
    layer: int,
    sentences: Sequence[str],
    batch_size: int = 32,
    max_length: int = 128,
) -> tuple[torch.Tensor, int]:
    """``E[k k^T]`` over every non-pad token of ``sentences`` at ``layer``'s down_proj input.

    Returns:
        ``(C, n_tokens)``: C (I, I) in float64, and the number of tokens averaged.
    """
    if not sentences:
        raise ValueError("no sentences to estimate the second moment from")
    module = down_proj(model, layer)
    device = module.weight.device
    width = module.in_features
    total = torch.zeros(width, width, dtype=torch.float64, device=device)
    count = 0
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0])
        raise _StopForward

    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # less padding
    handle = module.register_forward_pre_hook(hook)
    try:
        for b in range(0, len(order), batch_size):
            ids = [
                list(tokenizer(sentences[i])["input_ids"])[:max_length]
                for i in order[b : b + batch_size]
            ]
            ids = [x for x in ids if x]
            if not ids:
                continue
            t = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), t), _pad_id(tokenizer), dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for i, x in enumerate(ids):
                input_ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            captured.clear()
            try:
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            except _StopForward:
                pass
            keys = captured[0][mask.to(device).bool()].double()  # (N_tok, I)
            total += keys.T @ keys
            count += keys.shape[0]
    finally:
        handle.remove()
    return total / count, count


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-60:] or "model"


def stats_key(model: nn.Module, layer: int, sentences: Sequence[str]) -> str:
    """File stem naming the model, the layer's weights, the layer and the sample set."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    name = Path(name).name or name  # a local folder's name, not its whole path
    weight = down_proj(model, layer).weight.detach().cpu().contiguous().flatten()
    w_hash = hashlib.sha256(weight.view(torch.uint8).numpy().tobytes()).hexdigest()[:12]
    s_hash = hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:12]
    return f"{_slug(name)}-w{w_hash}-layer{layer}-n{len(sentences)}-s{s_hash}"


def second_moment(
    model: nn.Module,
    tokenizer: Any,
    layer: int,
    sentences: Sequence[str],
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """``E[k k^T]`` (I, I) float64 for ``layer``, loaded from the cache or computed and cached.

    Args:
        model, tokenizer: the (unedited) decoder.
        layer: decoder layer whose down_proj inputs are the keys.
        sentences: the text sample (e.g. the first N sentences of the Wikipedia corpus).
        cache_dir: root folder; default ``$LARIMAR_CACHE`` or ``~/.cache/larimar``.
        batch_size: sentences per forward pass when computing.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / STATS_SUBDIR / f"{stats_key(model, layer, sentences)}.safetensors"
    device = down_proj(model, layer).weight.device
    if path.is_file():
        logger.info("loading second-moment statistics from %s", path)
        return load_file(path)["mom2"].to(device)
    logger.info("computing second-moment statistics of layer %d on %d sentences (once)",
                layer, len(sentences))
    mom2, n_tokens = compute_second_moment(model, tokenizer, layer, sentences, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"mom2": mom2.cpu().contiguous()}, tmp,
                  metadata={"n_tokens": str(n_tokens), "n_sentences": str(len(sentences))})
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info("cached second-moment statistics (%d tokens) at %s", n_tokens, path)
    return mom2
