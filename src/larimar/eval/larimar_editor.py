"""The ``larimar`` editor: Larimar's episodic memory behind the harness's :class:`Editor` protocol.

``edit`` writes each case's fact (``prompt + " " + target_new``) into one memory, optionally with
its paraphrases completed by ``target_new``; ``forget`` removes facts by case id (exactly, RLS
with alpha = -1); ``reset`` starts a new memory. Scoring and generation go through
:meth:`larimar.editing.Larimar.score` / ``generate``: the scope detector decides per query, from
the query alone, whether the memory readout conditions the decoder.

Example:
    >>> editor = LarimarEditor(model_path="path/to/model", scope_threshold=0.7)
    >>> editor.edit(cases)  # doctest: +SKIP
    >>> editor.generate([cases[0].prompt], max_new_tokens=10)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from larimar.eval.datasets import EditCase
from larimar.eval.editor import Editor, EditorOptions

if TYPE_CHECKING:
    from larimar.editing import Larimar, Memory

logger = logging.getLogger(__name__)


class LarimarEditor(Editor):
    """Knowledge editing by writing facts into a Larimar episodic memory.

    Args:
        model_path: folder of a saved Larimar model; ``None`` loads the built-in model (a
            ``FileNotFoundError`` says to pass a path while the built-in model is not shipped).
        scope_threshold: cosine-similarity threshold of the scope detector; ``None`` keeps the
            model's default.
        write_paraphrases: also write each paraphrase prompt completed with ``target_new``
            (same fact id, forgotten with it). Off by default: the harness scores those
            paraphrases, so writing them makes paraphrase success an in-memory recall.
        lm: an already loaded :class:`~larimar.editing.Larimar` (overrides ``model_path``).
    """

    name = "larimar"

    def __init__(
        self,
        model_path: str | Path | None = None,
        scope_threshold: float | None = None,
        write_paraphrases: bool = False,
        lm: Larimar | None = None,
        device: str = "cpu",
    ) -> None:
        if lm is None:
            from larimar.editing import load

            lm = load(model_path, scope_threshold=scope_threshold, device=device)
        elif scope_threshold is not None:
            lm.scope_threshold = float(scope_threshold)
        self.lm = lm
        self.model_path = None if model_path is None else str(model_path)
        self.write_paraphrases = write_paraphrases
        self.memory: Memory = lm.new_memory()
        self.fact_ids: dict[str, str] = {}  # case id -> memory fact id

    @classmethod
    def from_options(cls, options: EditorOptions) -> Editor:
        """Larimar from the run's model folder (default built-in), scope threshold, paraphrase
        writing and device."""
        return cls(model_path=options.model, scope_threshold=options.scope_threshold,
                   write_paraphrases=options.write_paraphrases, device=options.device)

    # ------------------------------------------------------------------------------ editing
    def edit(self, cases: Sequence[EditCase]) -> None:
        """Write the cases' facts; a case id written before is replaced (old fact forgotten)."""
        if not cases:
            return
        self.forget([c.case_id for c in cases if c.case_id in self.fact_ids])
        paraphrases = (
            [[f"{p} {c.target_new}" for p in c.paraphrase_prompts] for c in cases]
            if self.write_paraphrases
            else None
        )
        ids = self.memory.write([c.fact for c in cases], paraphrases)
        self.fact_ids.update({c.case_id: fid for c, fid in zip(cases, ids)})
        logger.debug("larimar: wrote %d facts, %d in memory", len(ids), len(self.memory))

    def forget(self, case_ids: Sequence[str]) -> None:
        """Forget the facts written for ``case_ids``; ids never written are ignored."""
        for cid in case_ids:
            fid = self.fact_ids.pop(cid, None)
            if fid is not None:
                self.memory.forget(fid)

    def reset(self) -> None:
        self.memory = self.lm.new_memory()
        self.fact_ids.clear()

    # ------------------------------------------------------------------------------ queries
    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """Mean token NLLs; pairs sharing a prompt are scored together (one scope decision)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(i)
        out = [0.0] * len(prompts)
        for prompt, rows in groups.items():
            nlls = self.lm.score(prompt, [continuations[i] for i in rows], self.memory)
            for i, nll in zip(rows, nlls):
                out[i] = nll
        return out

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0
    ) -> list[str]:
        """Greedy (``temperature == 0``) or sampled continuations, one scope decision each."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
        if temperature == 0:
            return self.lm.generate_many(list(prompts), self.memory, max_new_tokens)
        return self._sample(prompts, max_new_tokens, temperature)

    def _sample(self, prompts: Sequence[str], max_new_tokens: int, temperature: float) -> list[str]:
        """Sampled continuations; identical prompts share one scope decision and one batch."""
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(i)
        out = [""] * len(prompts)
        for prompt, rows in groups.items():
            z = self.lm.scope(prompt, self.memory).z  # (1, C) or None
            texts = sample_continuations(self.lm, prompt, len(rows), z, max_new_tokens, temperature)
            for i, text in zip(rows, texts):
                out[i] = text
        return out

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_path or "built-in",
            "scope_threshold": self.lm.scope_threshold,
            "write_paraphrases": self.write_paraphrases,
            "readout_scale": self.lm.model.config.readout_scale,
        }


@torch.no_grad()
def sample_continuations(
    lm: Larimar, prompt: str, n: int, z: Tensor | None, max_new_tokens: int, temperature: float
) -> list[str]:
    """``n`` temperature samples of ``prompt``'s continuation, conditioned on ``z`` (1, C) if given.

    Plain ancestral sampling (softmax of logits / temperature, no top-k / top-p) with a full
    forward pass per step, from torch's global generator; a row stops at the tokenizer's eos.
    """
    decoder, tokenizer = lm.model.decoder, lm.tokenizer
    device = next(decoder.parameters()).device
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids] * n, device=device)  # (n, T)
    zz = None if z is None else z.expand(n, -1)  # (n, C)
    eos = tokenizer.eos_token_id
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        logits = decoder(ids, torch.ones_like(ids), z=zz).logits[:, -1].float()  # (n, V)
        token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)[:, 0]  # (n,)
        if eos is not None:
            token = token.masked_fill(done, eos)
            done |= token == eos
        ids = torch.cat([ids, token[:, None]], dim=1)
        if done.all():
            break
    return tokenizer.batch_decode(ids[:, len(prompt_ids) :], skip_special_tokens=True)
