"""One evaluation run from settings: load the data, build the editor, run a protocol.

The editor comes from the registry (:func:`larimar.eval.editors.build_editor`, with the run's
:meth:`~larimar.eval.config.EvalConfig.editor_options`); protocols are looked up in
:data:`PROTOCOLS`. Nothing here branches on an editor's name.

Example:
    >>> summary = run_eval(EvalConfig("sequential", "none", "zsre.json", limit=100))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from larimar.eval import editors, protocols
from larimar.eval.config import EvalConfig
from larimar.eval.datasets import EditCase, load_cases
from larimar.eval.editor import Editor

__all__ = ["PROTOCOLS", "EvalConfig", "build_editor", "load_eval_cases", "run_eval", "seed_everything",
           "summary_markdown", "tqdm_track"]

logger = logging.getLogger(__name__)


def build_editor(cfg: EvalConfig) -> Editor:
    """The editor named in ``cfg``, built from its options."""
    return editors.build_editor(cfg.editor, cfg.editor_options())


# ------------------------------------------------------------------------------ protocols

ProtocolRunner = Callable[[Editor, Sequence[EditCase], EvalConfig, protocols.Track[Any]],
                          dict[str, Any]]


def _single(editor: Editor, cases: Sequence[EditCase], cfg: EvalConfig,
            track: protocols.Track[Any]) -> dict[str, Any]:
    return protocols.run_single_fact(editor, cases, cfg.out_dir, max_new_tokens=cfg.max_new_tokens,
                                     run_config=_run_config(cfg), track=track)


def _batch(editor: Editor, cases: Sequence[EditCase], cfg: EvalConfig,
           track: protocols.Track[Any]) -> dict[str, Any]:
    return protocols.run_batch(editor, cases, cfg.out_dir, sizes=cfg.sizes or protocols.BATCH_SIZES,
                               max_eval=cfg.max_eval, max_new_tokens=cfg.max_new_tokens,
                               seed=cfg.seed, filler=_filler(cfg), alone=cfg.alone, run_config=_run_config(cfg),
                               track=track)


def _filler(cfg: EvalConfig) -> list[EditCase]:
    """The ``--filler`` cases a batch can use: as many as its largest size needs."""
    if cfg.filler is None:
        return []
    need = max(cfg.sizes or protocols.BATCH_SIZES)
    return load_cases(cfg.filler, limit=need, strip_distractor=cfg.strip_distractor, zsre_target=cfg.zsre_target)


def _sequential(editor: Editor, cases: Sequence[EditCase], cfg: EvalConfig,
                track: protocols.Track[Any]) -> dict[str, Any]:
    return protocols.run_sequential(editor, cases, cfg.out_dir, checkpoints=cfg.checkpoints,
                                    max_new_tokens=cfg.max_new_tokens,
                                    run_config=_run_config(cfg), track=track)


def _forgetting(editor: Editor, cases: Sequence[EditCase], cfg: EvalConfig,
                track: protocols.Track[Any]) -> dict[str, Any]:
    return protocols.run_forgetting(
        editor, cases, cfg.out_dir, sizes=cfg.sizes or (len(cases),), n_forget=cfg.n_forget,
        rewrite_unknown=cfg.rewrite_unknown, max_eval=cfg.max_eval,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, run_config=_run_config(cfg),
        track=track)


def _leakage(editor: Editor, cases: Sequence[EditCase], cfg: EvalConfig,
             track: protocols.Track[Any]) -> dict[str, Any]:
    return protocols.run_leakage(
        editor, cases, cfg.out_dir, n_known=cfg.n_known, known_by=cfg.known_by,
        n_paraphrases=cfg.n_paraphrases, n_samples=cfg.n_samples, temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, run_config=_run_config(cfg),
        track=track)


PROTOCOLS: dict[str, ProtocolRunner] = {
    "single": _single, "batch": _batch, "sequential": _sequential,
    "forgetting": _forgetting, "leakage": _leakage,
}
"""Protocol name -> runner."""


def _run_config(cfg: EvalConfig) -> dict[str, Any]:
    return {"run": cfg.to_json()}


def seed_everything(seed: int) -> None:
    """Seed python's and torch's generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def load_eval_cases(cfg: EvalConfig) -> list[EditCase]:
    """The dataset of ``cfg`` with its loader options."""
    limit = None if cfg.limit is None else cfg.offset + cfg.limit
    cases = load_cases(cfg.data, limit=limit, strip_distractor=cfg.strip_distractor,
                       zsre_target=cfg.zsre_target)
    return cases[cfg.offset :]


def tqdm_track(items: Iterable[Any], description: str, total: int | None) -> Iterable[Any]:
    """A :data:`~larimar.eval.protocols.Track` drawing a tqdm progress bar on stderr."""
    from tqdm import tqdm

    return tqdm(items, desc=description, total=total, dynamic_ncols=True)


def run_eval(cfg: EvalConfig, editor: Editor | None = None,
             track: protocols.Track[Any] = protocols.no_progress) -> dict[str, Any]:
    """Load the data, build the editor (unless given), seed, and run the protocol.

    Returns:
        The protocol's summary; its files are in ``cfg.out`` (``table.md`` among them).
    """
    cases = load_eval_cases(cfg)
    if not cases:
        raise ValueError(f"{cfg.data} holds no cases (offset {cfg.offset}, limit {cfg.limit})")
    seed_everything(cfg.seed)
    editor = editor or build_editor(cfg)
    logger.info("eval %s: editor %s, %d cases -> %s", cfg.protocol, editor.name, len(cases), cfg.out_dir)
    return PROTOCOLS[cfg.protocol](editor, cases, cfg, track)


def summary_markdown(cfg: EvalConfig) -> str:
    """The ``table.md`` a run wrote."""
    return (cfg.out_dir / protocols.TABLE_FILE).read_text(encoding="utf-8")
