"""Settings of one `larimar eval` run; the command's options are generated from them.

Example:
    >>> cfg = EvalConfig("sequential", "none", "zsre.json", limit=100)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from larimar.cliargs import option
from larimar.eval.datasets import ZsreTarget
from larimar.eval.editor import EditorOptions
from larimar.eval.protocols import CHECKPOINTS, KnownBy

ProtocolName = Literal["single", "batch", "sequential", "forgetting", "leakage"]
PROTOCOL_NAMES: tuple[str, ...] = get_args(ProtocolName)


def _all_if_zero(value: int | None) -> int | None:
    return value or None


@dataclass
class EvalConfig:
    """Settings of one `larimar eval` run; saved in the run's ``config.json``.

    Each field is the option ``--field-name`` of `larimar eval` (``protocol`` is positional).
    """

    protocol: ProtocolName = option("evaluation protocol", positional=True)
    editor: str = option("editor name: larimar, none, icl, ft, rome, grace, dummy")
    data: Path = option("dataset file (CounterFact or zsRE JSON)")
    limit: int | None = option("use the first N records (after --offset)", None)
    offset: int = option("skip the first K records (shards of one run; merge their cases.jsonl and resume)", 0)
    out: Path | None = option("results folder (default runs/eval/PROTOCOL-EDITOR)", None)
    model: Path | None = option(
        "larimar: saved model folder (default built-in); other editors: decoder folder", None)
    scope_threshold: float | None = option("scope detector threshold (larimar, icl)", None)
    max_facts: int | None = option(
        "icl: facts per prompt at most, the nearest to the query (0: all of them)", 32, from_cli=_all_if_zero)
    write_paraphrases: bool = option("larimar: also write paraphrases", False)
    strip_distractor: bool = option("strip ROME paraphrase distractors", False)
    zsre_target: ZsreTarget = option("zsRE edit target: alt (EasyEdit/GRACE) or answers0 (ROME/MEMIT)", "alt")
    seed: int = option("random seed (python, torch and every sampled subset)", 0)
    max_new_tokens: int = option("tokens per generation", 20)
    sizes: tuple[int, ...] | None = option("batch/forgetting N values, e.g. 1,16,64", None)
    filler: Path | None = option(
        "batch: a dataset whose facts fill each batch past the --data cases (written, never asked)", None)
    alone: bool = option("batch: also write each asked fact alone, the reference of the x-alone columns", False)
    checkpoints: tuple[int, ...] = option("sequential checkpoints", CHECKPOINTS)
    max_eval: int | None = option("batch/forgetting: facts evaluated at most", None)
    n_forget: int = option("forgetting: facts forgotten", 1)
    rewrite_unknown: bool = option("forgetting: rewrite forgotten facts as unknown", False)
    n_known: int = option("leakage: known facts attacked", 20)
    known_by: KnownBy = option("leakage: how a known fact is detected", "generate")
    n_paraphrases: int = option("leakage: paraphrase prompts per fact (besides the rewrite prompt)", 4)
    n_samples: int = option("leakage: samples per attack prompt", 5)
    temperature: float = option("leakage: sampling temperature", 1.0)
    stats_corpus: Path | None = option(
        "rome: sentences (JSONL) for its second-moment statistics, computed once and cached", None,
        cli_default=Path("runs/corpus/train.jsonl"))
    device: str = option("where the models run: cpu, cuda, cuda:N or auto", "cpu")

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOL_NAMES:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {list(PROTOCOL_NAMES)}")
        from larimar.eval.editors import available_editors  # the registry imports every editor

        if self.editor not in available_editors():
            raise ValueError(f"unknown editor {self.editor!r}; available: {available_editors()}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be positive; got {self.limit}")
        if self.offset < 0:
            raise ValueError(f"--offset must be >= 0; got {self.offset}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be positive; got {self.max_new_tokens}")
        if self.max_facts is not None and self.max_facts < 1:
            raise ValueError(f"--max-facts must be positive (or 0 for all facts); got {self.max_facts}")
        if (self.filler is not None or self.alone) and self.protocol != "batch":
            raise ValueError(f"--filler and --alone belong to the batch protocol; drop them for {self.protocol}")
        self.data, self.model = Path(self.data), None if self.model is None else Path(self.model)
        self.filler = None if self.filler is None else Path(self.filler)
        self.device = resolve_device(self.device)
        self.out = self.out_dir

    @property
    def out_dir(self) -> Path:
        """The results folder (``out`` once set by ``__post_init__``)."""
        return Path(self.out or Path("runs") / "eval" / f"{self.protocol}-{self.editor}")

    def editor_options(self) -> EditorOptions:
        """What the editor is built from."""
        return EditorOptions(model=self.model, scope_threshold=self.scope_threshold,
                             max_facts=self.max_facts, write_paraphrases=self.write_paraphrases,
                             stats_corpus=self.stats_corpus, device=self.device)

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-friendly values."""
        return {k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(self).items()}


def resolve_device(name: str) -> str:
    """A checked torch device name; "auto" is "cuda" when a GPU is visible, else "cpu"."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or auto; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu")
    return str(device)
