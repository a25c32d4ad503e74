"""EasyEdit-compatible editing: `edit(prompts, target_new, ...)` with EasyEdit's metrics.

Each request writes "prompt + ' ' + target_new" (and its rephrases, as paraphrases) into one
memory, one sequential write per request. After all writes, every query is routed by the scope
detector and scored with teacher forcing, as EasyEdit does:

* rewrite_acc / rephrase_acc: share of target_new tokens that are the argmax after the prompt;
* locality[<key>_acc]: share of argmax tokens on the locality prompt + ground truth that are
  unchanged from the unedited model.

Per edit (EasyEdit's layout): {"case_id", "requested_rewrite", "time", "pre": {...},
"post": {"rewrite_acc": [a], "rephrase_acc": [a], "locality": {"neighborhood_acc": [a]},
"portability": {}}}; "time" is the seconds of that request's write (encode + RLS update).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..model.text import TokenScores, join_continuation, score_tokens
from .memory import Memory


class Larimar(Protocol):
    """What editing needs of `larimar.Larimar` (named here so this module does not import it)."""

    model: Any
    tokenizer: Any

    def scope(self, prompt: str, memory: Memory | None = None, scope_threshold: float | None = None) -> Any: ...

    def new_memory(self) -> Memory: ...


def _per_edit(value: Any, n: int, name: str) -> list[Any]:
    """One entry per edit: a str becomes [str]; a list must have n entries."""
    values = [value] if isinstance(value, str) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} must have one entry per prompt ({n}); got {len(values)}")
    return values


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _locality(
    locality_inputs: Mapping[str, Mapping[str, Any]] | None, n: int
) -> dict[str, list[tuple[list[str], list[str]]]]:
    """{key: per edit (prompts, ground truths)} from EasyEdit's {key: {"prompt", "ground_truth"}}."""
    out = {}
    for key, spec in (locality_inputs or {}).items():
        if "prompt" not in spec or "ground_truth" not in spec:
            raise ValueError(f"locality_inputs[{key!r}] needs 'prompt' and 'ground_truth' lists")
        prompts = _per_edit(spec["prompt"], n, f"locality_inputs[{key!r}]['prompt']")
        truths = _per_edit(spec["ground_truth"], n, f"locality_inputs[{key!r}]['ground_truth']")
        pairs = []
        for p, t in zip(prompts, truths):
            ps, ts = _as_list(p), _as_list(t)
            if len(ps) != len(ts):
                raise ValueError(f"locality_inputs[{key!r}]: {len(ps)} prompts but {len(ts)} ground truths")
            pairs.append((ps, ts))
        out[key] = pairs
    return out


Threshold = float | None


def _scores(lm: Larimar, prompts: list[str], targets: list[str], memory: Memory | None,
            threshold: Threshold) -> list[TokenScores]:
    """Teacher-forced scores of each target after its prompt, each routed by the scope detector."""
    out = []
    for prompt, target in zip(prompts, targets):
        z = lm.scope(prompt, memory, threshold).z
        out.extend(score_tokens(lm.model.decoder, lm.tokenizer, [prompt], [target], z=z))
    return out


def _accuracies(lm: Larimar, prompts: list[str], targets: list[str], memory: Memory | None,
                threshold: Threshold) -> list[float]:
    return [s.accuracy for s in _scores(lm, prompts, targets, memory, threshold)]


def _unchanged(lm: Larimar, prompts: list[str], truths: list[str], memory: Memory, threshold: Threshold) -> list[float]:
    """Share of argmax tokens equal to the unedited model's, per locality prompt."""
    before = _scores(lm, prompts, truths, None, threshold)
    after = _scores(lm, prompts, truths, memory, threshold)
    return [(a.predicted == b.predicted).double().mean().item() for a, b in zip(after, before)]


@dataclass(frozen=True)
class _Request:
    """One edit request, normalised."""

    prompt: str
    target: str
    ground_truth: str | None
    rephrases: list[str]
    locality: dict[str, tuple[list[str], list[str]]]

    def as_dict(self) -> dict[str, Any]:
        """EasyEdit's `requested_rewrite`."""
        return {
            "prompt": self.prompt, "target_new": self.target, "ground_truth": self.ground_truth,
            "rephrase_prompt": self.rephrases,
            "locality": {k: {"prompt": p, "ground_truth": t} for k, (p, t) in self.locality.items()},
        }


def _requests(prompts: str | Sequence[str], target_new: str | Sequence[str], ground_truth: Any,
              rephrase_prompts: Any, locality_inputs: Mapping[str, Mapping[str, Any]] | None) -> list[_Request]:
    prompts = _as_list(prompts)
    n = len(prompts)
    targets = _per_edit(target_new, n, "target_new")
    truths = [None] * n if ground_truth is None else _per_edit(ground_truth, n, "ground_truth")
    rephrases = [[]] * n if rephrase_prompts is None else _per_edit(rephrase_prompts, n, "rephrase_prompts")
    locality = _locality(locality_inputs, n)
    return [
        _Request(prompts[i], targets[i], truths[i], _as_list(rephrases[i]), {k: v[i] for k, v in locality.items()})
        for i in range(n)
    ]


def _measure(lm: Larimar, request: _Request, memory: Memory | None, threshold: Threshold) -> dict[str, Any]:
    """rewrite_acc, rephrase_acc (if any) and locality of one request, with or without the memory."""
    out: dict[str, Any] = {"rewrite_acc": _accuracies(lm, [request.prompt], [request.target], memory, threshold)}
    if request.rephrases:
        targets = [request.target] * len(request.rephrases)
        out["rephrase_acc"] = _accuracies(lm, request.rephrases, targets, memory, threshold)
    if memory is not None:
        out["locality"] = {f"{key}_acc": _unchanged(lm, prompts, truths, memory, threshold)
                           for key, (prompts, truths) in request.locality.items()}
    out["portability"] = {}
    return out


def edit(
    lm: Larimar,
    prompts: str | Sequence[str],
    target_new: str | Sequence[str],
    ground_truth: str | Sequence[str] | None = None,
    rephrase_prompts: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
    locality_inputs: Mapping[str, Mapping[str, Any]] | None = None,
    memory: Memory | None = None,
    scope_threshold: float | None = None,
) -> tuple[list[dict[str, Any]], Memory]:
    """Write each edit into `memory` (a fresh one if None) and measure it like EasyEdit.

    Args:
        prompts: (n,) edit prompts, e.g. "The Eiffel Tower is located in".
        target_new: (n,) new targets, e.g. "Rome".
        ground_truth: (n,) old targets (recorded only), or None.
        rephrase_prompts: per edit one rephrase or a list of them, or None.
        locality_inputs: {key: {"prompt": (n,), "ground_truth": (n,)}}, each entry a str or list.
        memory: the memory to write into; None creates one.
        scope_threshold: overrides the scope threshold for the measurements.

    Returns:
        (per-edit metrics, the memory holding the edits).
    """
    requests = _requests(prompts, target_new, ground_truth, rephrase_prompts, locality_inputs)
    memory = memory if memory is not None else lm.new_memory()
    times = []
    for r in requests:
        started = time.perf_counter()
        memory.write([join_continuation(r.prompt, r.target)], [[join_continuation(p, r.target) for p in r.rephrases]])
        times.append(time.perf_counter() - started)
    return [
        {"case_id": i, "requested_rewrite": r.as_dict(), "time": times[i],
         "pre": _measure(lm, r, None, scope_threshold), "post": _measure(lm, r, memory, scope_threshold)}
        for i, r in enumerate(requests)
    ], memory
