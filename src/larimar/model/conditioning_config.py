"""How the memory readout conditions the decoder: `ConditioningConfig` (see `conditioning`)."""

from dataclasses import dataclass
from typing import Literal

ConditioningMode = Literal["kv", "prefix", "output"]
TrainablePart = Literal["adapter", "lora", "full"]


@dataclass
class ConditioningConfig:
    """How the memory readout z conditions the decoder."""

    code_size: int
    """Width C of the memory readout z."""
    mode: ConditioningMode = "output"
    """"output": late fusion into the final hidden state (the decoder's states stay the base's;
    the built-in model); "kv": extra key/value slots in every layer (paper); "prefix": soft
    prefix embeddings."""
    slots: int = 1
    """Memory key/value slots S per layer (mode "kv")."""
    prefix_length: int = 4
    """Soft prefix embeddings P (mode "prefix")."""
    embedding_offset: bool = False
    """Add a linear map of z (zero-initialised) to every input token embedding (modes "kv" and
    "prefix" only)."""
    share_key_value: bool = False
    """Use one vector as both key and value of a slot, as the reference code does (mode "kv")."""
    init_std: float = 0.02
    """Initial output scale of the kv/prefix map: its outputs have std init_std * rms(z)."""
    lora_rank: int = 0
    """Rank of LoRA adapters on the decoder (0: none); they are active only when z is given."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (scale = lora_alpha / lora_rank)."""
    lora_targets: tuple[str, ...] | None = None
    """Module-name suffixes that get LoRA; None infers the attention projections."""
    trainable: TrainablePart = "adapter"
    """What trains: "adapter" (conditioning maps only), "lora" (+ LoRA), "full" (+ decoder)."""
    fusion_hidden: int = 1024
    """Hidden width of the fusion MLP F (mode "output")."""
    copy_seen_threshold: float = 0.9
    """Mode "output": a text token whose embedding has a cosine above this with the copy
    direction counts as the copied word already present, and closes the copy gate."""
    copy_seen_relative: bool = True
    """Measure that cosine relative to the best cosine any vocabulary token reaches with the copy
    direction (1.0 for the token the copy term points at), so the test does not depend on how
    clean the readout is: a readout mixed from several facts lowers every absolute cosine."""
    sequence_size: int = 0
    """Mode "output": width D of a sequence channel after the C coordinates of z (a successor
    sketch, `larimar.model.sequence`; z is then C + D wide). 0: none."""
    sequence_weight: float = 10.0
    """Logit added to a token whose successor score is 1 (scores above the threshold are
    rescaled linearly: weight * (score - threshold) / (1 - threshold))."""
    sequence_threshold: float = 0.3
    """Successor scores below this add nothing (they are the sketch's noise)."""
    sequence_confidence: float = 0.6
    """Where the best successor score exceeds this while the token the copy term points at
    scores below `sequence_threshold` (the text goes on with something else), the copy term is
    off at that position. This keeps the stored last word from being pushed at every position
    of a sentence that the sequence channel already spells out."""
    sequence_lead: float | None = 2.0
    """Where the best successor score exceeds `sequence_confidence`, that successor's logit is
    raised to at least the highest other logit of the row plus this margin, so a continuation the memory
    confidently holds wins over whatever the decoder prefers there (an instruction-tuned
    decoder ends its turn after a question mark, for instance). None: no such rule."""

    def __post_init__(self) -> None:
        if self.code_size <= 0:
            raise ValueError(f"code_size must be positive; got {self.code_size}")
        if self.mode not in ("kv", "prefix", "output"):
            raise ValueError(f'mode must be "kv", "prefix" or "output"; got {self.mode!r}')
        if self.mode == "output" and self.embedding_offset:
            raise ValueError(
                'mode "output" conditions only the final hidden state; set embedding_offset: false'
            )
        if self.fusion_hidden <= 0:
            raise ValueError(f"fusion_hidden must be positive; got {self.fusion_hidden}")
        if self.sequence_size < 0:
            raise ValueError(f"sequence_size must be >= 0; got {self.sequence_size}")
        if self.sequence_size and self.mode != "output":
            raise ValueError('a sequence channel (sequence_size > 0) needs mode "output"')
        if not 0.0 <= self.sequence_threshold < 1.0 or not 0.0 <= self.sequence_confidence < 1.0:
            raise ValueError("sequence_threshold and sequence_confidence must be in [0, 1); got "
                             f"{self.sequence_threshold}, {self.sequence_confidence}")
        if self.sequence_lead is not None and self.sequence_lead < 0:
            raise ValueError(f"sequence_lead must be >= 0 (a logit margin) or null; got {self.sequence_lead}")
        if self.slots <= 0:
            raise ValueError(f"slots must be positive; got {self.slots}")
        if self.prefix_length <= 0:
            raise ValueError(f"prefix_length must be positive; got {self.prefix_length}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be non-negative; got {self.init_std}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0; got {self.lora_rank}")
        if self.trainable not in ("adapter", "lora", "full"):
            raise ValueError(
                f'trainable must be "adapter", "lora" or "full"; got {self.trainable!r}'
            )
        if self.trainable == "lora" and self.lora_rank == 0:
            raise ValueError('trainable="lora" needs lora_rank > 0')
