"""The configuration of a training run, read from YAML and saved beside its checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ..model.larimar import LarimarConfig
from .data import DataConfig
from .scope import ScopeTrainConfig


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 20
    """Linear warm-up steps (optimiser steps)."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warm-up, to zero at loop.max_steps."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.lr <= 0 or self.grad_accum < 1 or self.warmup_steps < 0:
            raise ValueError("optim: need lr > 0, grad_accum >= 1, warmup_steps >= 0")
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ValueError(f"optim.schedule must be linear, cosine or constant; got {self.schedule!r}")


@dataclass
class LossConfig:
    """Weights of the loss terms besides reconstruction through memory (weight 1)."""

    autoencoding: float = 0.0
    """alpha on CE(x | z), decoding from the sentence's own latent."""
    kl_max: float = 0.01
    """Peak of the cyclical weight on the reading-weight KL."""
    kl_cycle: int = 200
    """Steps per KL cycle: the weight rises linearly over the first half, then stays at kl_max."""
    language_model: float = 0.0
    """Weight of CE(x | no memory); only useful when the decoder's own weights train."""

    def kl_weight(self, step: int) -> float:
        """The cyclical KL weight at an optimiser step."""
        if self.kl_cycle <= 0:
            return self.kl_max
        phase = (step % self.kl_cycle) / (self.kl_cycle / 2)
        return self.kl_max * min(1.0, phase)


@dataclass
class LoopConfig:
    """Length of the run, and how often it logs, validates and checkpoints."""

    max_steps: int = 1000
    """Optimiser steps in the whole run (also the end of the LR schedule)."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this much wall time in one invocation; resume continues."""
    log_every: int = 10
    """Steps between JSONL log lines."""
    eval_every: int = 100
    """Steps between validations."""
    save_every: int = 100
    """Steps between checkpoints."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest deleted)."""
    eval_sentences: int = 64
    """Held-out sentences used by each validation (losses and copy accuracy)."""
    cache_frozen_encoder: bool = True
    """With a frozen encoder body, compute each text's pooled state once."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """"auto": bf16 on GPU, full precision on CPU."""

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"loop.max_steps must be >= 1; got {self.max_steps}")
        for name in ("log_every", "eval_every", "save_every", "keep_checkpoints", "eval_sentences"):
            if getattr(self, name) < 1:
                raise ValueError(f"loop.{name} must be >= 1; got {getattr(self, name)}")


@dataclass
class FusionConfig:
    """Training on cached frozen states (conditioning mode "output", frozen encoder body and
    decoder): see `larimar.train.fusion`."""

    batch_sentences: int = 128
    """Sentences per optimiser step, split into episodes."""
    episode_sizes: tuple[int, ...] = (1, 2, 4, 8)
    """E of each step is drawn from these (each must divide batch_sentences)."""
    extra_positions: int = 2
    """Besides the last word's tokens, this many random earlier positions per sentence enter
    the loss (reconstruction of the rest of the sentence)."""
    full_query: float = 0.25
    """Share of sentences read back with the whole sentence instead of the prefix."""
    shard_size: int = 1000
    """Sentences per cache shard."""
    cache_dir: str | None = None
    """Where the cached states go; None: <output_dir>/cache."""
    cache_batch: int = 32
    """Sentences per decoder forward while caching."""
    frozen: tuple[str, ...] = ()
    """Names (prefixes) of trainable parameters to keep at their initial values, e.g.
    ("decoder.memory_map", "encoder.lexical_head") to keep the initial copy path."""
    sequence_dropout: float = 0.0
    """Share of statement episodes read without their sequence sketch (with a sequence
    channel), so that the copy path still learns to answer prompts whose wording the sketch
    does not hold (paraphrases)."""
    questions: str | None = None
    """CounterFact train cases (EasyEdit flat JSON) for question episodes in the chat format
    (`larimar.train.questions`); None: statements only."""
    question_cases: int = 4000
    """CounterFact cases turned into question episodes (one question each)."""
    question_templated: int = 2000
    """Templated personal and office facts turned into question episodes."""
    question_qa: int = 0
    """Further CounterFact cases written as a question and its answer ("Q: ... A: ...")."""
    question_corpus: int = 0
    """Sentences of the training corpus (data.corpus) that define their subject, each asked about it."""
    question_casual: float = 0.3
    """Share of questions typed casually (lower case, no question mark)."""
    question_sentences: int = 0
    """Question episodes scored per optimiser step, besides `batch_sentences` statements."""
    question_max_tokens: int = 96
    """Longest question episode (chat prompt and reply, decoder tokens) kept."""

    def __post_init__(self) -> None:
        self.episode_sizes = tuple(self.episode_sizes)
        self.frozen = tuple(self.frozen)
        if not 0.0 <= self.sequence_dropout <= 1.0 or not 0.0 <= self.question_casual <= 1.0:
            raise ValueError("fusion: need 0 <= sequence_dropout <= 1 and 0 <= question_casual <= 1")
        if min(self.question_sentences, self.question_cases, self.question_templated, self.question_qa,
               self.question_corpus) < 0:
            raise ValueError("fusion: question_sentences, question_cases, question_templated, question_qa and "
                             "question_corpus must be >= 0")
        if self.question_sentences and self.questions is None:
            raise ValueError("fusion.question_sentences needs fusion.questions (the CounterFact train file)")
        if not self.episode_sizes or any(e < 1 or self.batch_sentences % e for e in self.episode_sizes):
            raise ValueError(f"fusion.episode_sizes must be >= 1 and divide batch_sentences ({self.batch_sentences}); "
                             f"got {self.episode_sizes}")
        if self.extra_positions < 0 or not 0.0 <= self.full_query <= 1.0 or self.shard_size < 1:
            raise ValueError("fusion: need extra_positions >= 0, 0 <= full_query <= 1, shard_size >= 1")


@dataclass
class ExportConfig:
    """How `larimar export` turns a checkpoint of this run into the model that ships: the
    weightless parts and the inference settings chosen by measurement (see `model_config`)."""

    checkpoint: int | None = None
    """The step of the checkpoint to export by default (None: the option is required)."""
    sequence_size: int = 0
    """Width of a weightless sequence channel to add (`LarimarConfig.with_sequence_channel`)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Inference settings merged into the model config: top-level keys (scope_threshold,
    readout_scale) and a `conditioning` mapping (copy and sequence rules)."""

    def __post_init__(self) -> None:
        if self.sequence_size < 0:
            raise ValueError(f"export.sequence_size must be >= 0; got {self.sequence_size}")
        allowed = {"scope_threshold", "readout_scale", "conditioning"}
        unknown = set(self.settings) - allowed
        if unknown:
            raise ValueError(f"export.settings may set {sorted(allowed)}; got {sorted(unknown)}")

    def model_config(self, trained: LarimarConfig, scope: dict[str, Any] | None = None) -> LarimarConfig:
        """The exported model's config: the trained one, plus the channel, the settings and the
        fitted scope detector (`ScopeConfig` fields, from the run's scope stage) if given."""
        config = trained.with_sequence_channel(self.sequence_size) if self.sequence_size else trained
        data = config.to_dict()
        if scope is not None:
            data["scope"] = scope
        for key, value in self.settings.items():
            if key == "conditioning":
                unknown = set(value) - set(data["conditioning"])
                if unknown:
                    raise ValueError(f"export.settings.conditioning: unknown keys {sorted(unknown)}")
                data["conditioning"].update(value)
            else:
                data[key] = value
        return LarimarConfig.from_dict(data)


@dataclass
class TrainConfig:
    """One training run."""

    output_dir: str = "runs/train"
    """Where checkpoints, the log and the final model go."""
    seed: int = 0
    """Seed of initialisation, data order and sampling."""
    model: LarimarConfig = field(default_factory=LarimarConfig)
    """The model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """Episodes."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """Run length and bookkeeping."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """Cached-state training (used when the model's conditioning mode is "output")."""
    scope: ScopeTrainConfig = field(default_factory=ScopeTrainConfig)
    """The scope detector's stage (`larimar.train.scope`), run after the model."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """What `larimar export` adds to a checkpoint of this run."""

    @property
    def uses_cached_states(self) -> bool:
        """Whether this run trains on cached frozen states (`larimar.train.fusion`)."""
        cond = self.model.conditioning
        return (cond is not None and cond.mode == "output" and cond.trainable == "adapter"
                and not self.model.encoder_trainable)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view, for YAML/JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested dictionaries; unknown keys are an error that names them."""
        sections = {"model": LarimarConfig, "data": DataConfig, "optim": OptimConfig, "loss": LossConfig, "loop": LoopConfig,
                    "fusion": FusionConfig, "scope": ScopeTrainConfig, "export": ExportConfig}
        _reject_unknown(cls, data, "")
        kwargs = dict(data)
        for name, klass in sections.items():
            if name in kwargs and isinstance(kwargs[name], dict):
                if klass is LarimarConfig:
                    kwargs[name] = LarimarConfig.from_dict(kwargs[name])
                else:
                    _reject_unknown(klass, kwargs[name], name + ".")
                    kwargs[name] = klass(**kwargs[name])
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a YAML file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no training config at {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {})

    def save_yaml(self, path: str | Path) -> None:
        """Write the resolved config."""
        Path(path).write_text(yaml.safe_dump(_plain(self.to_dict()), sort_keys=False))


def _reject_unknown(klass: type, data: dict[str, Any], prefix: str) -> None:
    unknown = set(data) - {f.name for f in fields(klass)}
    if unknown:
        raise ValueError(f"unknown training config keys: {sorted(prefix + k for k in unknown)}")


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so that safe_dump writes plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
