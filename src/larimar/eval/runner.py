"""One evaluation run from settings: load the data, build the editor, run a protocol.

Editors are built by name through :data:`BUILDERS` (a builder turns the run's shared options
-- model path, scope threshold, paraphrase writing -- into the editor's own arguments); names
without a builder are constructed with :func:`larimar.eval.editors.get_editor`. Protocols are
looked up in :data:`PROTOCOLS`. Nothing here branches on an editor's name.

Example:
    >>> summary = run_eval(EvalConfig("sequential", "none", "zsre.json", limit=100))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from larimar.eval import protocols
from larimar.eval.datasets import EditCase, ZsreTarget, load_cases
from larimar.eval.editors import Editor, Embedder, available_editors, get_editor

logger = logging.getLogger(__name__)

ProtocolName = Literal["single", "batch", "sequential", "forgetting", "leakage"]


@dataclass
class EvalConfig:
    """Settings of one `larimar eval` run; saved in the run's ``config.json``."""

    protocol: ProtocolName
    """Which protocol: single, batch, sequential, forgetting or leakage."""
    editor: str
    """Registered editor name (see `available_editors()`)."""
    data: Path
    """Dataset file (CounterFact / zsRE, any supported schema)."""
    limit: int | None = None
    """Use the first `limit` records of the file (after `offset`)."""
    offset: int = 0
    """Skip this many records first: shards of one run (`--offset 500 --limit 500`) write
    per-case records that a run over the whole range, pointed at the merged files, resumes."""
    out: Path | None = None
    """Results folder; default runs/eval/<protocol>-<editor>."""
    model: Path | None = None
    """Larimar: saved model folder (default built-in); other editors: a decoder HF folder."""
    scope_threshold: float | None = None
    """Scope-detector cosine threshold (larimar, icl)."""
    max_facts: int | None = 32
    """icl: facts per prompt at most (the nearest to the query when more are stored); None: all."""
    write_paraphrases: bool = False
    """Larimar: also write each case's paraphrases completed with the new target."""
    strip_distractor: bool = False
    """Strip the distractor sentence from ROME CounterFact paraphrase prompts."""
    zsre_target: ZsreTarget = "alt"
    """MEND zsRE edit target: `alt` (EasyEdit/GRACE) or `answers0` (ROME/MEMIT)."""
    seed: int = 0
    """Seed of python's and torch's generators and of every sampled subset."""
    max_new_tokens: int = 20
    """Greedy / sampled tokens per generation."""
    sizes: tuple[int, ...] | None = None
    """Batch / forgetting: the N values (default: the protocol's)."""
    checkpoints: tuple[int, ...] = protocols.CHECKPOINTS
    """Sequential: edit counts at which all past edits are evaluated (plus the last)."""
    max_eval: int | None = None
    """Batch / forgetting: evaluate at most this many written (retained) facts."""
    n_forget: int = 1
    """Forgetting: facts forgotten per N."""
    rewrite_unknown: bool = False
    """Forgetting: rewrite each forgotten fact as "prompt + unknown"."""
    n_known: int = 20
    """Leakage: number of known facts to attack."""
    known_by: protocols.KnownBy = "generate"
    """Leakage: how "the base model knows the fact" is decided."""
    n_paraphrases: int = 4
    """Leakage: paraphrase prompts per fact (besides the rewrite prompt)."""
    n_samples: int = 5
    """Leakage: sampled generations per attack prompt."""
    temperature: float = 1.0
    """Leakage: sampling temperature."""
    stats_corpus: Path | None = None
    """ROME: sentences (corpus JSONL) for the second-moment statistics of its edited layer."""
    device: str = "cpu"
    """Where the editor's models run: "cpu", "cuda", "cuda:1", ... ("auto": cuda when available)."""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {list(PROTOCOLS)}")
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
        self.data, self.model = Path(self.data), None if self.model is None else Path(self.model)
        self.device = resolve_device(self.device)
        self.out = self.out_dir

    @property
    def out_dir(self) -> Path:
        """The results folder (``out`` once set by ``__post_init__``)."""
        return Path(self.out or Path("runs") / "eval" / f"{self.protocol}-{self.editor}")

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-friendly values."""
        return {k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(self).items()}


# ------------------------------------------------------------------------------ editors

EditorBuilder = Callable[[str, EvalConfig], Editor]
BUILDERS: dict[str, EditorBuilder] = {}
"""Editor name -> builder from the run's options; names not here use `default_builder`."""


def register_builder(name: str) -> Callable[[EditorBuilder], EditorBuilder]:
    """Decorator registering how editor ``name`` is built from an :class:`EvalConfig`."""

    def decorate(fn: EditorBuilder) -> EditorBuilder:
        BUILDERS[name] = fn
        return fn

    return decorate


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


def _decoder_kwargs(cfg: EvalConfig) -> dict[str, Any]:
    """``load_decoder`` for --model (a decoder folder) and --device (HF-decoder editors)."""
    if cfg.model is None and cfg.device == "cpu":
        return {}
    from larimar.model.assets import load_decoder

    folder, device = cfg.model or "default", cfg.device

    def load() -> tuple[Any, Any]:
        model, tokenizer = load_decoder(folder)
        return model.to(device), tokenizer

    return {"load_decoder": load}


def default_builder(name: str, cfg: EvalConfig) -> Editor:
    """``get_editor(name, ...)`` with --model as the decoder folder and --scope-threshold."""
    kwargs = _decoder_kwargs(cfg)
    if cfg.scope_threshold is not None:
        kwargs["scope_threshold"] = cfg.scope_threshold
    try:
        return get_editor(name, **kwargs)
    except TypeError as err:
        raise ValueError(f"editor {name!r} does not take options {sorted(kwargs)}: {err}") from None


def encoder_embedder() -> Embedder:
    """``embed(texts) -> (N, H)`` unit sentence embeddings from the project's default encoder
    (all-MiniLM-L6-v2 through :class:`larimar.model.encoder.SentenceEncoder`), with the
    ``keys`` / ``views`` of Larimar's scope detector, so that in-context editing with a scope
    threshold decides its scope exactly as the Larimar editor does. The encoder is loaded on
    first use."""
    return ScopeEmbedder()


class ScopeEmbedder:
    """Sentence embeddings plus the scope detector's fact keys and query views.

    Args:
        encoder: a :class:`larimar.model.encoder.SentenceEncoder`; ``None`` loads the default
            one the first time it is needed.
    """

    def __init__(self, encoder: Any = None) -> None:
        self._encoder = encoder

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from larimar.model.assets import load_default_encoder
            from larimar.model.encoder import SentenceEncoder

            body, tokenizer = load_default_encoder()
            self._encoder = SentenceEncoder(body, tokenizer, trainable=False)
        return self._encoder

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder.embed(list(texts))

    def keys(self, facts: Sequence[str]) -> torch.Tensor:
        """(F, 2, H): each fact's whole-text and head embeddings."""
        from larimar.editing.encoding import encode_texts

        return encode_texts(self.encoder, list(facts), scope_keys=True)[1]

    def views(self, prompt: str) -> torch.Tensor:
        """(V, H): the prompt and, after a leading sentence, its last sentence."""
        from larimar.editing.encoding import encode_texts, query_views

        return encode_texts(self.encoder, query_views(prompt))[1]


@register_builder("icl")
def build_icl(name: str, cfg: EvalConfig, embed: Embedder | None = None) -> Editor:
    """In-context editing; the project's encoder picks the facts a prompt gets when they do not
    all fit (and, with a scope threshold, decides the scope)."""
    kwargs = _decoder_kwargs(cfg)
    kwargs.update(scope_threshold=cfg.scope_threshold, embed=embed or encoder_embedder(), max_facts=cfg.max_facts)
    return get_editor(name, **kwargs)


@register_builder("larimar")
def build_larimar(name: str, cfg: EvalConfig) -> Editor:
    """Larimar from --model (default built-in), --scope-threshold, --write-paraphrases."""
    return get_editor(name, model_path=cfg.model, scope_threshold=cfg.scope_threshold,
                      write_paraphrases=cfg.write_paraphrases, device=cfg.device)


@register_builder("rome")
def build_rome(name: str, cfg: EvalConfig) -> Editor:
    """ROME with its key statistics from --stats-corpus (computed once, then cached)."""
    if cfg.stats_corpus is None or not Path(cfg.stats_corpus).is_file():
        raise ValueError(f"rome needs a sentence corpus for its statistics; no file at {cfg.stats_corpus} "
                         "(build one with `larimar corpus --out runs/corpus`)")
    return get_editor(name, stats_corpus=Path(cfg.stats_corpus), **_decoder_kwargs(cfg))


def build_editor(cfg: EvalConfig) -> Editor:
    """The editor named in ``cfg``, built by its registered builder."""
    return BUILDERS.get(cfg.editor, default_builder)(cfg.editor, cfg)


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
                               seed=cfg.seed, run_config=_run_config(cfg), track=track)


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
