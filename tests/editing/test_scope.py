"""The scope detector's keys and query views: head keys from the same encoder pass, a
distractor sentence before a question, and memories saved with one key per item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import larimar
from larimar.editing.encoding import encode_texts, head_mask, query_views
from larimar.model.encoder import mean_pool
from tests.tiny import SENTENCES


def test_query_views_split_off_a_leading_sentence() -> None:
    assert query_views("Howard Glacier is located in") == ["Howard Glacier is located in"]
    q = "A festival is held since 1990. Howard Glacier is located in"
    assert query_views(q) == [q, "Howard Glacier is located in"]
    assert query_views("Is it? ") == ["Is it? "]


def test_scope_keys_come_from_one_pass(lm: larimar.Larimar) -> None:
    enc = lm.model.encoder
    texts = [SENTENCES[0], SENTENCES[1], "Paris"]
    latents, whole = encode_texts(enc, texts)
    latents2, keys = encode_texts(enc, texts, scope_keys=True)
    assert keys.shape == (3, 2, whole.shape[-1]) and keys.dtype == torch.float64
    assert torch.equal(latents, latents2) and torch.allclose(keys[:, 0], whole)
    assert torch.allclose(keys.norm(dim=-1), torch.ones(3, 2, dtype=torch.float64))
    # the head key is the mean of the same states over the head's tokens
    batch = enc.tokenize(texts)
    hidden = enc.states(batch["input_ids"], batch["attention_mask"])
    mask = head_mask(enc, texts, hidden.shape[1])
    expected = F.normalize(mean_pool(hidden, mask).double(), dim=-1)
    assert torch.allclose(keys[:, 1], expected)
    assert mask[0].sum() < batch["attention_mask"][0].sum()  # the last word and [SEP] are left out
    assert torch.allclose(keys[2, 1], keys[2, 0])  # a one-word text is its own head


def test_a_question_after_a_distractor_matches_by_its_last_sentence(lm: larimar.Larimar) -> None:
    memory = lm.new_memory()
    [fact] = memory.write([SENTENCES[0]])
    question = SENTENCES[0].rsplit(" ", 1)[0]
    distracted = f"{SENTENCES[5]} {question}"
    _, views = encode_texts(lm.model.encoder, query_views(distracted))
    sims = memory.similarities(views)  # (2 views, 1 item)
    assert sims.shape == (2, 1)
    fact_id, best = memory.nearest(views)
    assert fact_id == fact and best == float(sims.max())
    decision = lm.scope(distracted, memory, scope_threshold=float(sims.max()) - 1e-9)
    assert decision.in_scope and decision.similarity == pytest.approx(best, abs=1e-6)
    assert not lm.scope(distracted, memory, scope_threshold=min(1.0, best + 1e-5)).in_scope


def test_memories_of_format_version_1_migrate_on_load(lm: larimar.Larimar, tmp_path: Path) -> None:
    """A version-1 file (one episode, one scope key per item, no episode column) loads: its
    facts are written again from their texts, keeping ids, dates and paraphrases."""
    memory = lm.new_memory()
    ids = memory.write(SENTENCES[:2], paraphrases=[[SENTENCES[3]], []])
    path = tmp_path / "m.safetensors"
    memory.save(path)
    tensors = load_file(path)
    tensors["item_embeddings"] = tensors["item_embeddings"][:, 0].contiguous()  # the old layout
    del tensors["item_episodes"]
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    log = json.loads(metadata["metadata"])
    log["kind_version"] = 1
    del log["episode_items"]
    save_file(tensors, str(path), metadata={**metadata, "metadata": json.dumps(log)})
    old = lm.load_memory(path)
    assert [f.id for f in old.facts()] == ids and old.facts() == memory.facts()
    assert old.items.embeddings.shape == memory.items.embeddings.shape
    torch.testing.assert_close(old.items.latents, memory.items.latents)
    old.write([SENTENCES[2]])
    assert len(old) == 3
