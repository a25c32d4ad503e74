"""The editors Larimar is compared with, each listed by name in :mod:`larimar.eval.editors`.

* ``none`` -- :class:`~larimar.eval.baselines.unedited.UneditedEditor`: the base decoder.
* ``icl`` -- :class:`~larimar.eval.baselines.icl.InContextEditor`: the facts in the prompt.
* ``ft`` -- :class:`~larimar.eval.baselines.ft.FineTuneEditor`: FT-L, L-inf-constrained
  fine-tuning of one MLP output matrix.
* ``rome`` -- :class:`~larimar.eval.baselines.rome.ROMEEditor`: rank-one model editing with
  cached second-moment statistics (:mod:`larimar.eval.baselines.stats`).
* ``grace`` -- :class:`~larimar.eval.baselines.grace.GRACEEditor`: a key-value codebook with
  deferral radii at one layer.

Every hyperparameter is a field of the method's config dataclass (``FTConfig``, ``ROMEConfig``,
``GRACEConfig``), documented with the paper's value and ours; pass fields as keyword arguments
to :func:`larimar.eval.editors.get_editor`.
"""

from larimar.eval.baselines.ft import FineTuneEditor, FTConfig
from larimar.eval.baselines.grace import CodebookEntry, GRACEConfig, GRACEEditor
from larimar.eval.baselines.icl import InContextEditor
from larimar.eval.baselines.rome import ROMEConfig, ROMEEditor, rank_one_update
from larimar.eval.baselines.unedited import UneditedEditor

__all__ = [
    "CodebookEntry",
    "FTConfig",
    "FineTuneEditor",
    "GRACEConfig",
    "GRACEEditor",
    "InContextEditor",
    "ROMEConfig",
    "ROMEEditor",
    "UneditedEditor",
    "rank_one_update",
]
