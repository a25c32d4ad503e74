"""A tiny random Larimar model with the built-in model's modes and channels (tests only).

Late fusion (conditioning mode "output"), the lexical channel aligned on the last word, a
sequence channel addressed only by the first `CODE` coordinates (memory key_size), relative copy
coverage and the `sequence_lead` rule, a scope detector's network, and a decoder tokenizer with
a chat template: the
shipped configuration in miniature, exercised through the public API.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from larimar.memory import MemoryConfig
from larimar.model import ConditioningConfig, LarimarConfig, LarimarModel
from larimar.model.scope import ScopeConfig
from tests.tiny import save_base_models

CODE, SEQUENCE = 16, 512
TINY_SCOPE = ScopeConfig(w1=[[0.0, 0.0, 6.0, 0.0, 0.0, 0.0, -6.0, 0.0, 0.0, 0.0, -6.0]], b1=[-3.0], w2=[8.0], b2=0.0)
"""A trained detector's shape with set weights: in scope when the query's words are the text's
(cover_query near 1), no name in the query is missing from the text, and a question for a number
or a date meets a text that states one."""
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def shipped_config(root: Path) -> LarimarConfig:
    """Tiny base models under `root` (the decoder's tokenizer gets a chat template) and a config
    with the built-in model's shape."""
    enc_dir, dec_dir = save_base_models(root)
    tok = AutoTokenizer.from_pretrained(dec_dir)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(dec_dir)
    return LarimarConfig(
        encoder=str(enc_dir), decoder=str(dec_dir),
        memory=MemoryConfig(slots=32, code_size=CODE + SEQUENCE, key_size=CODE),
        conditioning=ConditioningConfig(
            code_size=CODE, mode="output", embedding_offset=False, fusion_hidden=32,
            copy_seen_threshold=0.9, copy_seen_relative=True,
            sequence_size=SEQUENCE, sequence_lead=2.0,
        ),
        encoder_max_length=32, lexical_tokens=4, lexical_align="word", scope_threshold=0.5,
        scope=TINY_SCOPE,
    )


def save_tiny_shipped(root: Path) -> Path:
    """Save the tiny shipped-shaped model (random weights) and return its folder."""
    model = LarimarModel.from_config(shipped_config(root))
    folder = root / "larimar"
    model.save_pretrained(folder)
    return folder
