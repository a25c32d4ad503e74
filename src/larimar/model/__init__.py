"""Encoder, decoder conditioning and the Larimar model; base models load offline from packages."""

from .conditioning import ConditioningConfig, MemoryConditionedDecoder
from .encoder import SentenceEncoder
from .larimar import (
    EpisodeBatch,
    LarimarConfig,
    LarimarModel,
    LarimarOutput,
    LossWeights,
    TextBatch,
)

__all__ = [
    "ConditioningConfig",
    "EpisodeBatch",
    "LarimarConfig",
    "LarimarModel",
    "LarimarOutput",
    "LossWeights",
    "MemoryConditionedDecoder",
    "SentenceEncoder",
    "TextBatch",
]
