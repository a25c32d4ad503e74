"""Continuous decoding (`DecodeLoop`): rows that join late, end at different steps or share a
prefix get the tokens of `greedy` on each row alone (float64 tiny decoders, so exactly)."""

from __future__ import annotations

import pytest
import torch

from larimar.model.decoding import DecodeLoop, Row, supports
from tests.model.test_conditioning import CODE, VOCAB, condition, make_decoder

LENGTHS = [5, 9, 3, 7, 6]
BUDGETS = [6, 3, 8, 5, 7]
MODES = {"none": None, "kv": dict(mode="kv", slots=2), "prefix": dict(mode="prefix", prefix_length=3),
         "output": dict(mode="output", embedding_offset=False, fusion_hidden=16, sequence_size=16)}


def model_for(mode: str):  # noqa: ANN201
    model = condition(make_decoder("llama_gqa"), **(MODES[mode] or {})).double()
    model.decoder.generation_config.eos_token_id = None
    return model


def prompts(prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    g = torch.Generator().manual_seed(5)
    return [prefix + tuple(torch.randint(4, VOCAB, (n,), generator=g).tolist()) for n in LENGTHS]


def alone(model, ids: tuple[int, ...], z: torch.Tensor | None, budget: int, eos: int | None,  # noqa: ANN001
          candidates: tuple[int, ...] | None = None) -> list[int]:
    cand = None if candidates is None else torch.tensor([candidates])
    out = model.greedy(torch.tensor([ids]), z=None if z is None else z[None], max_new_tokens=budget,
                       eos_token_id=eos, reply_start=True, candidates=cand)
    return out.sequences[0, len(ids):].tolist()


def rows_of(model, texts: list[tuple[int, ...]], mode: str) -> list[Row]:  # noqa: ANN001
    z = torch.randn(len(texts), model.z_size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cands = [(7, 9, 11 + i) for i in range(len(texts))] if mode == "output" else [None] * len(texts)
    return [Row(i, ids, None if mode == "none" else z[i], cands[i], BUDGETS[i]) for i, ids in enumerate(texts)]


@pytest.mark.parametrize("mode", list(MODES))
def test_rows_ending_at_different_steps_and_joining_late_equal_each_alone(mode: str) -> None:
    model = model_for(mode)
    rows = rows_of(model, prompts(), mode)
    free = [alone(model, r.ids, r.z, r.max_new_tokens, None, r.candidates) for r in rows]
    def lengths(eos: int) -> set[int]:  # when each row ends, by eos or by its budget
        return {next((i + 1 for i, t in enumerate(f) if t == eos), len(f)) for f in free}

    eos = max({t for f in free for t in f}, key=lambda t: len(lengths(t)))
    expected = [alone(model, r.ids, r.z, r.max_new_tokens, eos, r.candidates) for r in rows]
    assert len({len(e) for e in expected}) >= 3 and any(e[-1] == eos for e in expected)
    loop = DecodeLoop(model, eos_token_id=eos, reply_start=True)
    assert loop.run(rows, batch_size=2) == expected  # at most 2 at once: rows join as others end
    assert loop.active == 0


def test_finished_rows_leave_the_batch_and_its_cache() -> None:
    model = model_for("kv")
    rows = rows_of(model, prompts(), "kv")
    loop = DecodeLoop(model, eos_token_id=None, reply_start=True)
    assert loop.add(rows[:3]) == []
    sizes = [loop.active]
    while loop.active:
        loop.step()
        sizes.append(loop.active)
        lanes = list(loop._lanes.values())
        assert all(lane.cache.layers[0].keys.shape[0] == len(lane.rows) == lane.mask.shape[0] for lane in lanes)
    assert sizes == [3, 3, 2, 2, 2, 1, 1, 0]  # budgets 6, 3, 8 (add gives the first token): each leaves at once


@pytest.mark.parametrize("mode", ["none", "output"])
def test_a_shared_prefix_is_computed_once_and_changes_no_token(mode: str) -> None:
    model = model_for(mode)
    prefix = (5, 17, 23, 42)
    rows = rows_of(model, prompts(prefix), mode)
    rows.append(Row(9, (8, 9, 10), rows[0].z, rows[0].candidates, 4))  # not starting with the prefix
    expected = [alone(model, r.ids, r.z, r.max_new_tokens, None, r.candidates) for r in rows]
    loop = DecodeLoop(model, eos_token_id=None, reply_start=True, prefix=prefix)
    assert loop._shares_prefix(rows[0]) and not loop._shares_prefix(rows[-1])
    assert loop.run(rows, batch_size=3) == expected  # rows join the shared lane at different steps
    assert len(loop._prefix_kv) == 1  # computed once, for the first rows


def test_sliding_window_decoders_are_refused() -> None:
    model = condition(make_decoder("gemma3"))
    assert not supports(model)
    with pytest.raises(ValueError, match="sliding"):
        DecodeLoop(model)


def test_bad_rows_are_explained() -> None:
    loop = DecodeLoop(model_for("none"))
    with pytest.raises(ValueError, match="empty prompt"):
        loop.add([Row(0, ())])
    with pytest.raises(ValueError, match="max_new_tokens"):
        loop.add([Row(0, (5,), max_new_tokens=0)])
    assert loop.active == 0 and CODE
