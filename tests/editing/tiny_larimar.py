"""A tiny random Larimar model saved with `save_pretrained`, built offline (tests only)."""

from __future__ import annotations

from pathlib import Path

import torch

from larimar.memory import MemoryConfig
from larimar.model import ConditioningConfig, LarimarConfig, LarimarModel
from tests.tiny import save_base_models

CODE_SIZE = 8


def tiny_config(root: Path) -> LarimarConfig:
    """Tiny encoder/decoder folders under `root` and a config around them."""
    enc_dir, dec_dir = save_base_models(root)
    return LarimarConfig(
        encoder=str(enc_dir), decoder=str(dec_dir),
        memory=MemoryConfig(slots=32, code_size=CODE_SIZE),
        conditioning=ConditioningConfig(code_size=CODE_SIZE, mode="kv", embedding_offset=True, init_std=2.0),
        encoder_max_length=16, readout_scale=3.0, scope_threshold=0.9,
    )


def save_tiny_larimar(root: Path) -> Path:
    """Save a tiny Larimar model whose memory visibly changes the decoder; returns its folder."""
    model = LarimarModel.from_config(tiny_config(root))
    torch.manual_seed(1)
    with torch.no_grad():
        model.decoder.offset_map.weight.normal_(std=1.0)
    folder = root / "larimar"
    model.save_pretrained(folder)
    return folder
