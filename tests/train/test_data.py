import random

import pytest

from larimar.train.data import Collator, DataConfig, EpisodeStream, make_query, split_last_word, swap_last_word
from tests import tiny


def test_split_and_swap_last_word():
    assert split_last_word("It is red.") == ("It is", "red", ".")
    assert split_last_word("Paris, France!\") ") == ("Paris,", "France", '!")')
    assert swap_last_word("It is red.", "The sky is blue.") == "It is blue."
    assert swap_last_word("Word.", "The sky is blue.") == "Word."  # nothing before the last word


def test_query_forms():
    rng = random.Random(0)
    s = "one two three four five six"
    assert make_query(s, "full", rng) == s
    assert make_query(s, "minus_last_word", rng) == "one two three four five"
    for _ in range(20):
        q = make_query(s, "prefix", rng)
        assert s.startswith(q) and len(q.split()) >= 3


def test_stream_is_deterministic_and_resumable():
    cfg = DataConfig(episode_size=2, episodes_per_batch=2, bucket_batches=2)
    stream = EpisodeStream(tiny.SENTENCES * 3, cfg, seed=1, length=len)
    first = [b for _, (_, _, b) in zip(range(10), iter(stream))]
    again = [b for _, (_, _, b) in zip(range(10), iter(stream))]
    assert first == again
    positions = [(e, i) for _, (e, i, _) in zip(range(10), iter(stream))]
    e, i = positions[7]
    resumed = next(stream.iterate_from(e, i))[2]
    assert resumed == first[7]


def test_batches_bucket_by_length():
    sentences = [("w " * n).strip() + "." for n in range(1, 41)]
    cfg = DataConfig(episode_size=4, episodes_per_batch=1, bucket_batches=10, swap_last_word=0.0)
    batches = EpisodeStream(sentences, cfg, seed=0, length=len).epoch_batches(0)
    spread = [max(len(e.written) for e in b) - min(len(e.written) for e in b) for b in batches]
    assert max(spread) <= 8  # neighbours in length, not a random mix


def test_collator_shapes_and_eos():
    dec, enc = tiny.bpe_tokenizer(), tiny.bert_tokenizer()
    cfg = DataConfig(episode_size=2, episodes_per_batch=2)
    examples = EpisodeStream(tiny.SENTENCES, cfg, seed=0, length=len).epoch_batches(0)[0]
    batch = Collator(enc, dec, 2, 32)(examples)
    assert batch.episodes == 2
    assert batch.written.input_ids.shape[0] == 4 and batch.queries.input_ids.shape[0] == 4
    lengths = batch.target_mask.sum(1)
    assert all(batch.target_ids[i, lengths[i] - 1] == dec.eos_token_id for i in range(4))
    with pytest.raises(ValueError, match="do not fill episodes"):
        Collator(enc, dec, 3, 32)(examples)


def test_config_validation():
    with pytest.raises(ValueError, match="query_forms may name"):
        DataConfig(query_forms={"suffix": 1.0})
    with pytest.raises(ValueError, match="probability"):
        DataConfig(swap_last_word=2.0)
    with pytest.raises(ValueError, match="need at least"):
        EpisodeStream(tiny.SENTENCES[:3], DataConfig(episode_size=4), seed=0, length=len)


def test_pooled_cache_computes_each_text_once_and_matches_the_encoder():
    import torch

    from larimar.model.encoder import SentenceEncoder
    from larimar.train.data import PooledCache

    tok = tiny.bert_tokenizer()
    encoder = SentenceEncoder(tiny.bert(tok), tok, trainable=False)
    calls = []
    original = encoder.pool
    encoder.pool = lambda ids, mask: calls.append(ids.shape[0]) or original(ids, mask)
    cache = PooledCache(encoder, batch_size=2, max_items=3)
    texts = tiny.SENTENCES[:3]
    first = cache(texts + texts[:1])
    assert sum(calls) == 3 and len(cache.store) == 3
    again = cache(texts[::-1])
    assert sum(calls) == 3  # nothing recomputed
    assert torch.allclose(again, first[:3].flip(0))
    batch = encoder.tokenize(texts)
    assert torch.allclose(first[:3], original(batch["input_ids"], batch["attention_mask"]), atol=1e-6)
    cache(tiny.SENTENCES[3:5])  # no room left: served, not stored
    assert len(cache.store) == 3
