"""The scope detector's keys and query views: head keys from the same encoder pass, a
distractor sentence before a question, and memories saved with one key per item."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
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
    assert decision.in_scope and decision.similarity == best
    assert not lm.scope(distracted, memory, scope_threshold=min(1.0, best + 1e-6)).in_scope


def test_memories_saved_with_one_key_per_item_still_load(lm: larimar.Larimar, tmp_path: Path) -> None:
    memory = lm.new_memory()
    memory.write(SENTENCES[:2])
    path = tmp_path / "m.safetensors"
    memory.save(path)
    tensors = load_file(path)
    tensors["item_embeddings"] = tensors["item_embeddings"][:, 0].contiguous()  # the old layout
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(path), metadata=metadata)
    old = lm.load_memory(path)
    assert old.items.embeddings.shape[1] == 1
    old.write([SENTENCES[2]])  # new items bring head keys; old ones reuse their whole-text key
    assert old.items.embeddings.shape[1:] == (2, memory.items.embeddings.shape[-1])
    assert torch.equal(old.items.embeddings[:2, 1], old.items.embeddings[:2, 0])
    assert len(old) == 3
