"""The sequence channel: hashed successor sketches, key-only addressing and the decoder's use."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from larimar.memory import EpisodicMemory, MemoryConfig
from larimar.model import ConditioningConfig, LarimarConfig, LarimarModel
from larimar.model import sequence
from larimar.model.decoding import DecodeLoop, Row
from larimar.model.late_fusion import _lead
from larimar.model.sequence import (
    START,
    Recall,
    SuccessorScorer,
    candidate_ids,
    consume,
    hashed_signs,
    previous_tokens,
    recover,
    row_pinv,
    sequence_codes,
    sequence_keys,
    successor_sketch,
)
from larimar.train.fusion import projection_readout
from tests import tiny

CODE, SEQ = 16, 512


# ------------------------------------------------------------------------------ hashing and sketches
def test_signs_are_deterministic_balanced_and_distinct_per_salt() -> None:
    ids = torch.arange(200)
    a, b = hashed_signs(ids, 256, 1), hashed_signs(ids, 256, 1)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(a.mean())) < 0.02
    assert not torch.equal(a, hashed_signs(ids, 256, 2))
    # near-orthogonal codes: |c(u) . c(v)| ~ 1/sqrt(D) for u != v, 1 for u == v
    codes = sequence_codes(ids, 1024)
    gram = codes @ codes.T
    torch.testing.assert_close(gram.diagonal(), torch.ones(200))
    assert float((gram - torch.eye(200)).abs().max()) < 0.2
    assert hashed_signs(torch.tensor([START]), 8, 3).abs().sum() == 8  # the start marker hashes too
    with pytest.raises(ValueError, match="dim"):
        hashed_signs(ids, 0, 1)


def test_known_signs_do_not_change() -> None:
    # the sketch of every stored memory depends on these exact values
    assert hashed_signs(torch.tensor([0, 1, 49151]), 6, 1).tolist() == KNOWN_SIGNS


KNOWN_SIGNS = [[-1.0, -1.0, 1.0, 1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]]


def test_cached_rows_of_a_few_ids_equal_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequence, "_ROWS", {})
    monkeypatch.setattr(sequence, "_ROWS_LIMIT", 5)  # emptied and refilled on the way
    gen = torch.Generator().manual_seed(0)
    for shape in [(1,), (), (3,), (2, 4), (sequence._FEW_IDS,), (sequence._FEW_IDS + 1,)]:
        ids = torch.randint(-2, 50_000, shape, generator=gen)
        for salt in (1, 2, 3):
            first, again = hashed_signs(ids, 64, salt), hashed_signs(ids, 64, salt)
            assert first.shape == (*shape, 64)
            assert torch.equal(first, sequence._signs(ids, 64, salt)) and torch.equal(again, first)
        assert len(sequence._ROWS) <= 5
    sequence._ROWS.clear()
    monkeypatch.setattr(sequence, "_ROWS_LIMIT", 4)
    for ids in ([1, 2], [1, 3, 4], [1, 5], [6, 7, 8, 9, 10, 1]):  # [1, 5] empties the cache while 1 is in it
        tensor = torch.tensor(ids)
        assert torch.equal(hashed_signs(tensor, 64, 2), sequence._signs(tensor, 64, 2))
        assert len(sequence._ROWS) <= 4
    out = hashed_signs(torch.tensor([7]), 64, 1)
    out.zero_()  # a caller's tensor is its own: the cache keeps the signs
    assert torch.equal(hashed_signs(torch.tensor([7]), 64, 1), sequence._signs(torch.tensor([7]), 64, 1))
    assert hashed_signs(torch.zeros(0, dtype=torch.long), 64, 1).shape == (0, 64)


def test_previous_tokens_start_at_text_and_after_padding() -> None:
    ids = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    assert previous_tokens(ids, mask).tolist() == [[START, 5, 6], [START, START, 8]]
    assert previous_tokens(ids).tolist() == [[START, 5, 6], [START, 0, 8]]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=2, max_size=12, unique=True))
def test_the_successor_of_each_context_scores_one(tokens: list[int]) -> None:
    scorer = SuccessorScorer(1000, 2048)
    sketch = successor_sketch([tokens], 2048)[0]
    ids = torch.tensor(tokens)
    prev = previous_tokens(ids[None])[0]
    scores = scorer.scores(sketch.expand(len(tokens), -1), ids, prev)  # (n, V)
    for i in range(len(tokens) - 1):
        assert abs(float(scores[i, tokens[i + 1]]) - 1.0) < 0.35
        assert int(scores[i].argmax()) == tokens[i + 1]
    # the start context (START, START) names the first token: a reply can begin the text
    first = scorer.scores(sketch[None], torch.tensor([START]), torch.tensor([START]))[0]
    assert int(first.argmax()) == tokens[0] and abs(float(first[tokens[0]]) - 1.0) < 0.35
    # the last token was followed by nothing: no score stands out
    assert float(scores[-1].max()) < 0.6


def test_two_tokens_of_context_separate_repeated_words() -> None:
    # "a b c . x b d": after (a, b) comes c, after (x, b) comes d
    a, b, c, dot, x, d = 10, 11, 12, 13, 14, 15
    sketch = successor_sketch([[a, b, c, dot, x, b, d]], 2048)[0]
    scorer = SuccessorScorer(100, 2048)
    s = scorer.scores(sketch.expand(2, -1), torch.tensor([b, b]), torch.tensor([a, x]))
    assert int(s[0].argmax()) == c and int(s[1].argmax()) == d
    assert float(s[0, d]) < 0.35 and float(s[1, c]) < 0.35


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(-1, 300), st.integers(0, 300), st.integers(0, 300),
       st.floats(-3.0, 3.0))
def test_consume_takes_out_at_most_one_occurrence_of_the_said_triple(seed: int, prev: int, cur: int, nxt: int,
                                                                      weight: float) -> None:
    """float64: consuming removes min(max(projection, 0), 1) along the triple's unit direction and
    leaves every orthogonal component as it was."""
    d = 256
    g = torch.Generator().manual_seed(seed)
    p, c, n = torch.tensor([prev]), torch.tensor([cur]), torch.tensor([nxt])
    direction = (hashed_signs(p, d, 3) * hashed_signs(c, d, 2) * sequence_codes(n, d)).double()  # (1, D)
    sketch = 0.1 * torch.randn(1, d, generator=g, dtype=torch.float64) + weight * direction
    after = consume(sketch, p, c, n)
    assert after.dtype == torch.float64
    before_proj, after_proj = float((sketch * direction).sum()), float((after * direction).sum())
    assert after_proj == pytest.approx(before_proj - min(max(before_proj, 0.0), 1.0), abs=1e-12)
    removed = sketch - after
    torch.testing.assert_close(removed, (removed * direction).sum() * direction, rtol=0, atol=1e-12)


def _spell(tokens: list[int], consuming: bool, steps: int = 20, vocab: int = 100, settle: bool = False) -> list[int]:
    """Greedy decoding by successor scores alone from (START, START), stopping where no score
    stands out; with `consuming`, each said triple leaves the sketch; with `settle`, forks go
    first to a branch that comes back."""
    dim = 1024
    scorer, sketch = SuccessorScorer(vocab, dim), successor_sketch([tokens], dim)
    previous, current, out = torch.tensor([START]), torch.tensor([START]), []
    for _ in range(steps):
        scores = scorer.scores(sketch, current, previous)
        if settle:
            scores = scorer.settle_forks(scores, sketch, current, previous, None, 0.6)
        scores = scores[0]
        if float(scores.max()) < 0.5:
            break
        chosen = scores.argmax()[None]
        out.append(int(chosen))
        if consuming:
            sketch = consume(sketch, previous, current, chosen)
        previous, current = current, chosen
    return out


def test_consuming_said_triples_ends_a_repeated_context() -> None:
    # "a b a b c": the context (a, b) is followed by a, then by c. Without consuming, the
    # decoding goes back to a for ever; consuming, the second visit names c and the text ends.
    text = [10, 43, 10, 43, 7]
    assert _spell(text, consuming=False)[:8] == [10, 43] * 4
    assert len(_spell(text, consuming=False)) == 20
    assert _spell(text, consuming=True) == text


# digits as a decoder writes them: "430,000 x", "2020", "676-7575", "555-0199"
FORKED = [[4, 3, 0, 51, 0, 0, 0, 52, 53], [2, 0, 2, 0, 50], [6, 7, 6, 60, 7, 5, 7, 5, 50], [5, 5, 5, 60, 0, 1, 9, 9, 50]]


@pytest.mark.parametrize("text", FORKED)
def test_forks_go_first_to_the_branch_that_comes_back(text: list[int]) -> None:
    """A context followed by two tokens ("0 0" by 0 and by "x" in "000 x") is a fork; consuming
    alone may take the exit first and drop the rest ("430,00 x"); settling forks spells the text."""
    assert _spell(text, consuming=True) != text
    assert _spell(text, consuming=True, settle=True) == text


def test_settle_forks_leaves_scores_without_forks_alone() -> None:
    scorer = SuccessorScorer(100, 1024)
    sketch = successor_sketch([[1, 2, 3, 4]], 1024)
    tokens, previous = torch.tensor([1]), torch.tensor([START])
    scores = scorer.scores(sketch, tokens, previous)
    assert scorer.settle_forks(scores, sketch, tokens, previous, None, 0.6) is scores
    # "2 0 2 0 x": at (2, 0) the branch 2 comes back after one token, x never does
    sketch = successor_sketch([[2, 0, 2, 0, 50]], 1024)
    tokens, previous = torch.tensor([0]), torch.tensor([2])
    scores = scorer.scores(sketch, tokens, previous)
    assert (scores[0] > 0.6).nonzero().squeeze(-1).tolist() == [2, 50]
    settled = scorer.settle_forks(scores, sketch, tokens, previous, None, 0.6)
    assert float(settled[0, 50]) == 0.0 and torch.equal(settled[0, :50], scores[0, :50])
    # when no branch comes back within the horizon, the fork is left to the decoder
    assert torch.equal(scorer.settle_forks(scores, sketch, tokens, previous, None, 0.6, horizon=0), scores)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=8))
def test_consuming_never_says_a_triple_more_often_than_written(tokens: list[int]) -> None:
    """With few distinct tokens the contexts repeat; the spelled text still ends, and says no
    (context, next) triple more often than the text holds it."""
    def triples(ids: list[int]) -> dict[tuple[int, int, int], int]:
        full, counts = [START, START, *ids], {}
        for i in range(len(ids)):
            key = (full[i], full[i + 1], full[i + 2])
            counts[key] = counts.get(key, 0) + 1
        return counts

    spelled = _spell(tokens, consuming=True, steps=3 * len(tokens), vocab=6)
    assert len(spelled) <= len(tokens)
    written = triples(tokens)
    assert all(n <= written.get(key, 0) for key, n in triples(spelled).items())


def test_short_texts_and_bad_widths() -> None:
    one, empty = successor_sketch([[7], []], 64)
    assert empty.abs().sum() == 0 and one.abs().sum() > 0  # one token: (START, START) -> 7
    scorer = SuccessorScorer(50, 64)
    with pytest.raises(ValueError, match="width 64"):
        scorer.scores(torch.zeros(1, 32), torch.tensor([1]), torch.tensor([START]))
    with pytest.raises(ValueError, match="vocab_size"):
        SuccessorScorer(0, 8)


# ------------------------------------------------------------------------------ key-only addressing
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_key_size_addresses_with_the_key_columns_only(seed: int, e: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    k, c, key = 24, 14, 9
    full = EpisodicMemory(MemoryConfig(slots=k, code_size=c, key_size=key)).double()
    keys_only = EpisodicMemory(MemoryConfig(slots=k, code_size=key)).double()
    with torch.no_grad():
        full.prior.copy_(torch.randn(k, c, generator=gen, dtype=torch.float64))
        keys_only.prior.copy_(full.prior[:, :key])
    z = torch.randn(2, e, c, generator=gen, dtype=torch.float64)
    other_values = torch.cat([z[..., :key], torch.randn(2, e, c - key, generator=gen, dtype=torch.float64)], -1)
    # write keys ignore the value columns and equal those of a memory of the key columns alone
    torch.testing.assert_close(full.address(z), full.address(other_values))
    torch.testing.assert_close(full.address(z), keys_only.address(z[..., :key]))
    state = full.write(z)
    # reading with the key part alone (values zeroed) brings the whole latent back
    query = torch.cat([z[..., :key], torch.zeros(2, e, c - key, dtype=torch.float64)], -1)
    torch.testing.assert_close(full.read(state, query), z, rtol=1e-8, atol=1e-8)
    # the closed-form readout used in training agrees
    q = torch.randn(2, 3, c, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(projection_readout(z, q, key), full.read(state, q), rtol=1e-8, atol=1e-8)
    # sequential writes and forgetting work the same way
    seq = full.update(full.empty(2, dtype=torch.float64), z)
    torch.testing.assert_close(full.read(seq, query), z, rtol=1e-7, atol=1e-7)
    forgotten = full.update(seq, z[:, :1], alpha=-1.0)
    if e > 1:
        torch.testing.assert_close(full.read(forgotten, query[:, 1:]), z[:, 1:], rtol=1e-7, atol=1e-7)


def test_key_size_equal_to_code_size_changes_nothing() -> None:
    torch.manual_seed(0)
    a = EpisodicMemory(MemoryConfig(slots=10, code_size=6)).double()
    b = EpisodicMemory(MemoryConfig(slots=10, code_size=6, key_size=6)).double()
    b.load_state_dict(a.state_dict())
    z = torch.randn(1, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(a.read(a.write(z), z * 0.5), b.read(b.write(z), z * 0.5))


@pytest.mark.parametrize("key_size", [0, 7])
def test_bad_key_size_is_refused(key_size: int) -> None:
    with pytest.raises(ValueError, match="key_size"):
        MemoryConfig(slots=4, code_size=6, key_size=key_size)


# ------------------------------------------------------------------------------ the model
def seq_config(**conditioning) -> LarimarConfig:
    return LarimarConfig(
        memory=MemoryConfig(slots=12, code_size=CODE + SEQ, key_size=CODE),
        conditioning=ConditioningConfig(code_size=CODE, mode="output", embedding_offset=False, fusion_hidden=32,
                                        sequence_size=SEQ, **conditioning),
        lexical_tokens=4,
    )


def seq_model(**conditioning) -> LarimarModel:
    torch.manual_seed(0)
    enc_tok, dec_tok = tiny.bert_tokenizer(), tiny.bpe_tokenizer()
    model = LarimarModel.from_modules(seq_config(**conditioning), tiny.bert(enc_tok), enc_tok,
                                      tiny.llama(dec_tok), dec_tok)
    model.init_copy_path(logit_scale=3.0)
    return model.eval()


def test_config_checks_the_widths() -> None:
    with pytest.raises(ValueError, match="memory.code_size"):
        LarimarConfig(memory=MemoryConfig(slots=4, code_size=CODE, key_size=CODE),
                      conditioning=ConditioningConfig(code_size=CODE, mode="output", embedding_offset=False,
                                                      sequence_size=SEQ))
    with pytest.raises(ValueError, match="key_size"):
        LarimarConfig(memory=MemoryConfig(slots=4, code_size=CODE + SEQ),
                      conditioning=ConditioningConfig(code_size=CODE, mode="output", embedding_offset=False,
                                                      sequence_size=SEQ))
    with pytest.raises(ValueError, match='mode "output"'):
        ConditioningConfig(code_size=CODE, mode="kv", embedding_offset=True, sequence_size=SEQ)
    with pytest.raises(ValueError, match="sequence_threshold"):
        ConditioningConfig(code_size=CODE, mode="output", embedding_offset=False, sequence_size=8,
                           sequence_threshold=1.5)


def test_latents_carry_the_sketch_of_the_text() -> None:
    model = seq_model()
    text = "the cat sat on the mat."
    z = model.encode([text, "a dog"])
    assert z.shape == (2, CODE + SEQ)
    tok = model.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    torch.testing.assert_close(z[0, CODE:], successor_sketch([ids], SEQ)[0])
    enc = model.encoder
    batch = enc.tokenize([text])
    with pytest.raises(ValueError, match="sequence"):
        enc.latent(enc.pool(batch["input_ids"], batch["attention_mask"]), batch["lexical_ids"], batch["lexical_mask"])


def test_decoder_spells_the_written_text_from_the_readout() -> None:
    """Write one sentence, read it back with itself, and decode from its first token: the
    sequence channel alone (a tiny random decoder knows nothing) reproduces the sentence."""
    model = seq_model(sequence_weight=60.0)
    tok = model.tokenizer
    text = "the cat sat on the mat."
    z = model.encode([text])
    state = model.memory.write(z[None])
    read = model.memory.read(state, z[None])[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = model.decoder.generate(torch.tensor([ids[:1]]), z=read, max_new_tokens=len(ids) + 2,
                                 eos_token_id=tok.eos_token_id)
    assert out[0, : len(ids)].tolist() == ids
    assert int(out[0, len(ids)]) == tok.eos_token_id  # and stops where the text ended
    # the full forward agrees: teacher-forced, every next token is the top-1
    logits = model.decoder(torch.tensor([ids]), z=read).logits[0]
    assert logits[:-1].argmax(-1).tolist() == ids[1:]
    # without the sketch (zeroed) the same decoder does not spell it
    blank = read.clone()
    blank[:, CODE:] = 0
    assert model.decoder(torch.tensor([ids]), z=blank).logits[0, :-1].argmax(-1).tolist() != ids[1:]


@pytest.mark.parametrize("text", ["the cat sat on the cat sat on the mat.", "one two one two one three.", "a b a b c."])
def test_generation_says_each_written_triple_at_most_as_often_as_written(text: str) -> None:
    """Texts whose two-token contexts repeat: greedy generation and `DecodeLoop` (float64, so
    exactly alike) both end, and say no (context, next) triple more often than the text holds it
    (before the sketch lost each said triple, "a b a b c" came back as "a b a b a b ...")."""
    model = seq_model(sequence_weight=60.0).double()
    tok = model.tokenizer
    z = model.encode([text])
    read = model.memory.read(model.memory.write(z[None]), z[None])[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    budget = 3 * len(ids)
    out = model.decoder.generate(torch.tensor([ids[:1]]), z=read, max_new_tokens=budget,
                                 eos_token_id=tok.eos_token_id)[0, 1:].tolist()
    loop = DecodeLoop(model.decoder, eos_token_id=tok.eos_token_id)
    assert loop.run([Row(0, tuple(ids[:1]), read[0], None, budget)])[0] == out
    assert tok.eos_token_id in out and len(out) <= len(ids)

    def triples(tokens: list[int]) -> dict[tuple[int, ...], int]:
        counts: dict[tuple[int, ...], int] = {}
        for i in range(2, len(tokens)):
            counts[tuple(tokens[i - 2 : i + 1])] = counts.get(tuple(tokens[i - 2 : i + 1]), 0) + 1
        return counts

    written = triples(ids + [tok.eos_token_id])
    assert all(n <= written.get(key, 0) for key, n in triples(ids[:1] + out).items())


def test_copy_term_yields_where_the_text_goes_on_otherwise() -> None:
    model = seq_model(sequence_weight=0.0)  # isolate the gate: no successor boost
    dec = model.decoder
    tok = model.tokenizer
    text = "the cat sat on the mat."
    z = model.encode([text])[0]
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    hidden = dec.final_hidden(ids[None])[0]  # (T, H)
    zz = z[None].expand(len(ids), -1)
    plain = dec.fused_logits(hidden, zz)  # no tokens: no sequence channel
    gated = dec.fused_logits(hidden, zz, tokens=ids, previous=previous_tokens(ids[None])[0])
    copied = (plain - dec.fused_logits(hidden, zz * torch.cat([torch.ones(CODE), torch.zeros(SEQ)])))
    assert torch.allclose(copied, torch.zeros_like(copied))  # the sketch enters only through tokens
    scores = dec.successors.scores(zz[:, CODE:], ids, previous_tokens(ids[None])[0])
    head = dec._body_and_head()[1].weight
    pointed = ((dec.memory_map(zz[:, :CODE]) @ head.T) / head.norm(dim=-1).clamp_min(1e-6)).argmax(-1)
    changed = (gated - plain).abs().amax(-1) > 0
    expected = (scores.amax(-1) > 0.6) & (scores.gather(-1, pointed[:, None])[:, 0] < 0.6)
    assert changed.tolist() == expected.tolist() and expected.any()


@pytest.mark.parametrize("rows", [1, 5, 40])
def test_row_pinv_is_the_pseudo_inverse_also_for_dependent_rows(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    atoms = (torch.randint(0, 2, (rows, 64), generator=gen) * 2 - 1).double() / 8
    torch.testing.assert_close(row_pinv(atoms), torch.linalg.pinv(atoms.T), rtol=1e-10, atol=1e-12)
    weights = row_pinv(atoms) @ atoms[0]  # a written atom's weights: one on itself, zero elsewhere
    torch.testing.assert_close(weights, torch.eye(rows, dtype=torch.float64)[0], rtol=0, atol=1e-10)
    twice = torch.cat([atoms, atoms[:1]])  # a repeated row: no Cholesky factor, the SVD's answer
    torch.testing.assert_close(row_pinv(twice), torch.linalg.pinv(twice.T), rtol=1e-8, atol=1e-10)


def test_fused_logits_are_the_same_given_the_pointed_token_and_with_gradients() -> None:
    model = seq_model(sequence_lead=0.5)
    dec = model.decoder
    tok = model.tokenizer
    text = "the cat sat on the mat."
    z = model.encode([text])[0]
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    candidates = torch.tensor([sorted(set(ids.tolist()) | {tok.eos_token_id})])
    hidden = dec.final_hidden(ids[None])  # (1, T, H)
    previous = previous_tokens(ids[None])
    base = dec.fused_logits(hidden, z[None], tokens=ids[None], previous=previous, candidates=candidates)
    pointed = dec.pointer(z[None], hidden.dtype).argmax(-1, keepdim=True)
    given = dec.fused_logits(hidden, z[None], tokens=ids[None], previous=previous, candidates=candidates,
                             pointed=pointed)
    assert torch.equal(given, base)
    with torch.enable_grad():  # recording a gradient takes the out-of-place path: the same logits
        read = z[None].clone().requires_grad_(True)
        recorded = dec.fused_logits(hidden, read, tokens=ids[None], previous=previous, candidates=candidates)
        recorded.logsumexp(-1).sum().backward()
    torch.testing.assert_close(recorded.detach(), base)
    assert read.grad is not None and bool(read.grad[0, CODE:].any())  # the successor scores pass a gradient


def test_sequence_lead_makes_a_confident_successor_win() -> None:
    """With a weak boost the random decoder does not spell the sentence; with sequence_lead it
    must, at every position, and stop where the written text stopped."""
    text = "the cat sat on the mat."
    for lead, spelled in ((None, False), (0.5, True)):
        model = seq_model(sequence_weight=0.1, sequence_lead=lead)
        tok = model.tokenizer
        z = model.encode([text])
        read = model.memory.read(model.memory.write(z[None]), z[None])[0]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        logits = model.decoder(torch.tensor([ids]), z=read).logits[0]
        assert (logits[:-1].argmax(-1).tolist() == ids[1:]) is spelled
        if spelled:
            top2 = logits.topk(2, -1).values
            assert bool((top2[:, 0] - top2[:, 1] >= 0.5 - 1e-4).all())  # the margin holds
            out = model.decoder.generate(torch.tensor([ids[:1]]), z=read, max_new_tokens=len(ids) + 2,
                                         eos_token_id=tok.eos_token_id)
            assert out[0].tolist() == ids + [tok.eos_token_id]


def test_sequence_lead_leaves_unconfident_rows_alone() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0], [1.0, 5.0, 2.0]])
    scores = torch.tensor([[0.9, 0.0, 0.1], [0.5, 0.0, 0.4]])
    out = _lead(logits, scores, confidence=0.6, margin=2.0)
    assert out[0].tolist() == [7.0, 5.0, 2.0] and out[1].tolist() == [1.0, 5.0, 2.0]
    already = _lead(torch.tensor([[9.0, 5.0]]), torch.tensor([[0.9, 0.0]]), 0.6, 2.0)
    assert already.tolist() == [[9.0, 5.0]]  # never lowered
    with pytest.raises(ValueError, match="sequence_lead"):
        ConditioningConfig(code_size=CODE, mode="output", embedding_offset=False, sequence_size=8,
                           sequence_lead=-1.0)


def test_sequence_model_round_trips(tmp_path) -> None:
    folder = tmp_path / "m"
    enc_dir, dec_dir = tiny.save_base_models(tmp_path / "base")
    cfg = seq_config()
    cfg.encoder, cfg.decoder = str(enc_dir), str(dec_dir)
    saved = LarimarModel.from_config(cfg)
    saved.save_pretrained(folder)
    loaded = LarimarModel.from_pretrained(folder)
    texts = ["the cat sat on the mat.", "a dog"]
    torch.testing.assert_close(loaded.encode(texts), saved.encode(texts))
    assert loaded.memory.config.key_size == CODE and loaded.decoder.z_size == CODE + SEQ


def test_candidate_scores_are_the_written_triple_counts() -> None:
    """With candidates the triples are recovered: each context's successors score their counts
    (1 per occurrence; a context written twice names both), other candidates 0, exactly up to
    float error, where the plain sketch scores carry crosstalk; non-candidates are 0."""
    dim = 256
    scorer = SuccessorScorer(300, dim)
    texts = [[5, 17, 42, 5, 17, 7, 9, 11, 13, 15, 19, 23, 29, 31, 37, 41], [100, 101, 5]]
    sketch = successor_sketch(texts, dim)  # (2, D)
    tokens, previous = torch.tensor([[17, 42], [101, 5]]), torch.tensor([[5, 17], [100, 101]])  # (2, 2)
    full = scorer.scores(sketch[:, None].expand(-1, 2, -1), tokens, previous)  # (2, 2, V)
    candidates = candidate_ids([sorted(set(texts[0])), [100, 101, 5]], torch.device("cpu"))
    some = scorer.scores(sketch[:, None].expand(-1, 2, -1), tokens, previous, candidates)
    expected = torch.zeros(2, 2, 300)
    expected[0, 0, 42] = expected[0, 0, 7] = 1.0  # (5, 17) -> 42, then -> 7
    expected[0, 1, 5] = 1.0  # (17, 42) -> 5
    expected[1, 0, 5] = 1.0  # (100, 101) -> 5; row 2 has no end token, so (101, 5) names nothing
    torch.testing.assert_close(some, expected, atol=1e-4, rtol=0)
    cols = candidates[0].unique()
    assert (full[0][:, cols] - expected[0][:, cols]).abs().max() > 0.05  # the crosstalk recall removes


@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=48))
def test_recover_finds_every_written_triple_and_its_count(tokens: list[int]) -> None:
    """Texts of up to 48 tokens over 41 ids (so contexts repeat): the pursuit finds exactly the
    written (context, next) triples, each weighted by its count, and a consumed sketch's weights
    through the pseudo-inverse drop, for the said triple alone, by what `consume` took out."""
    dim = 1024
    sketch = successor_sketch([tokens], dim)[0]
    seq = [START, START, *tokens]
    written: dict[tuple[int, int, int], int] = {}
    for i in range(len(tokens)):
        key = (seq[i], seq[i + 1], seq[i + 2])
        written[key] = written.get(key, 0) + 1
    recall = Recall.of(sketch[None], torch.tensor([tokens]))
    weights = (recall.pinv[0].double() @ sketch.double()).tolist()
    found = {tuple(t): w for t, w in zip(recall.triples[0].tolist(), weights) if abs(w) > 0.05}
    assert set(found) == set(written)
    for key, count in written.items():
        assert found[key] == pytest.approx(count, abs=0.05)
    first = torch.tensor([seq[0]]), torch.tensor([seq[1]]), torch.tensor([seq[2]])
    after = (recall.pinv[0].double() @ consume(sketch[None], *first)[0].double()).tolist()
    drop = {tuple(t): w - v for t, w, v in zip(recall.triples[0].tolist(), weights, after)}
    said = (first[0].item(), first[1].item(), first[2].item())
    atom = sequence_keys(*first[:2], dim)[0] * sequence_codes(first[2], dim)[0]
    taken = float((sketch.double() @ atom.double()).clamp(0.0, 1.0))
    assert drop[said] == pytest.approx(taken, abs=1e-3)
    assert all(abs(v) < 1e-3 for k, v in drop.items() if k != said)
    assert recover(sketch, torch.tensor(tokens))[0].shape[1] == 3


def test_recall_reads_a_long_text_the_plain_sketch_garbles() -> None:
    """A 40-token text at D = 512: the plain scores leave some successor unconfident or let a
    rival win; with recall every position names its successor."""
    dim = 512
    text = list(range(100, 140))
    sketch = successor_sketch([text], dim)
    scorer = SuccessorScorer(200, dim)
    seq = torch.tensor([[START, START, *text]])
    previous, tokens, nxt = seq[:, :-2], seq[:, 1:-1], seq[0, 2:]
    plain = scorer.scores(sketch[:, None].expand(-1, len(text), -1), tokens, previous)[0]
    recalled = scorer.scores(sketch[:, None].expand(-1, len(text), -1), tokens, previous, torch.tensor([text]))[0]
    assert (plain.argmax(-1)[:-1] != nxt[:-1]).any() or (plain.gather(-1, nxt[:, None]) < 0.6).any()
    assert (recalled.argmax(-1)[:-1] == nxt[:-1]).all()
    assert (recalled.gather(-1, nxt[:-1, None]) > 0.95).all()


@pytest.mark.parametrize("recalled", [False, True])
def test_a_prompt_that_took_one_way_of_a_fork_is_continued_the_other_way(recalled: bool, monkeypatch) -> None:
    """"a b c a b d.": prompted with "a b c a b", the context (a, b) goes on to c and to d. The
    prompt already took the way to c, so the continuation is " d." (greedy and `DecodeLoop`,
    float64, with and without the recalled text's tokens); without the prompt's triples taken
    out of the sketch the fork rule goes round again ("c a b ...")."""
    model = seq_model(sequence_weight=60.0).double()
    tok = model.tokenizer
    text = "a b c a b d."
    z = model.encode([text])
    read = model.memory.read(model.memory.write(z[None]), z[None])[0]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    prompt = tok("a b c a b", add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt)] == prompt
    rest = ids[len(prompt) :]
    words = tuple(sorted(set(ids) | {tok.eos_token_id}))

    def continuations() -> tuple[list[int], list[int]]:
        greedy = model.decoder.greedy(torch.tensor([prompt]), z=read, max_new_tokens=len(ids),
                                      eos_token_id=tok.eos_token_id,
                                      candidates=torch.tensor([words]) if recalled else None)
        loop = DecodeLoop(model.decoder, eos_token_id=tok.eos_token_id)
        row = Row(0, tuple(prompt), read[0], words if recalled else None, len(ids))
        return greedy.sequences[0, len(prompt):].tolist(), loop.run([row])[0]

    greedy, looped = continuations()
    assert greedy == looped == rest + [tok.eos_token_id]
    monkeypatch.setattr(type(model.decoder), "said_prompt", lambda self, z, *args: z)
    assert continuations()[0][: len(rest)] != rest


def test_a_sketch_that_holds_nothing_recalls_nothing() -> None:
    """A zero readout (nothing written, or an empty text) recovers no triple: scores stay 0, finite."""
    scorer = SuccessorScorer(50, 64)
    recall = Recall.of(torch.zeros(2, 64), torch.tensor([[3, 4], [5, 5]]))
    assert recall.triples.shape == (2, 1, 3) and (recall.pinv == 0).all()
    scores = scorer.scores(torch.zeros(2, 64), torch.tensor([3, 5]), torch.tensor([START, START]),
                           torch.tensor([[3, 4], [5, 5]]), recall)
    assert torch.isfinite(scores).all() and (scores == 0).all()


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_a_prompts_triples_leave_the_sketch_as_if_said_one_by_one(seed: int) -> None:
    """`said_prompt` (every position's triple direction in one batch) gives exactly the sketch of
    `said` applied position by position, padding left alone (float64, two rows of different lengths)."""
    model = seq_model().double()
    dec = model.decoder
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2, dec.z_size, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, 40, (2, 7), generator=gen)
    tokens[:, :2] = tokens[:, 2:4]  # repeated contexts, so some triples are taken out twice
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0  # the second row is left-padded
    previous = previous_tokens(tokens, mask)
    expected = z
    for i in range(tokens.shape[1] - 1):
        keep = (mask[:, i] * mask[:, i + 1]).bool()[:, None]
        expected = torch.where(keep, dec.said(expected, previous[:, i], tokens[:, i], tokens[:, i + 1]), expected)
    assert torch.equal(dec.said_prompt(z, previous, tokens, mask), expected)
