"""The deferred low-rank form behind sequential updates, in float64."""

from unittest import mock

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from larimar.memory import EpisodicMemory, MemoryConfig, lowrank
from larimar.memory.lowrank import FOLD_RANK, LowRankSum

F64 = torch.float64


def deferring():
    """The tests' matrices are small; defer them as the built-in model's large ones are."""
    return mock.patch.object(lowrank, "EAGER_SIZE", 0)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def full(k=6, c=6):
    """A LowRankSum with every factor, and its value."""
    base, left, right = randn(2, k, c), randn(2, k, 3, seed=1), randn(2, 3, c, seed=2)
    x, y = randn(2, k, 2, seed=5), randn(2, k, 2, seed=6)
    return LowRankSum(base, left, right, x, y), base + x @ y.mT @ base + left @ right


def test_products_equal_the_folded_matrix():
    lazy, dense = full()
    v, w = randn(2, 6, seed=3), randn(2, 4, 6, seed=4)
    torch.testing.assert_close(lazy.matvec(v), (dense @ v[..., None])[..., 0])
    torch.testing.assert_close(lazy.left_multiply(w), w @ dense)
    assert lazy.rank == 5
    torch.testing.assert_close(lazy.dense(), dense)
    assert lazy.rank == 0 and lazy.dense() is lazy.dense()  # folded once, then kept


@deferring()
def test_assign_replaces_rows_through_the_factors():
    lazy, dense = full(c=5)
    a, keys, values = randn(2, 6, 2, seed=7), randn(2, 6, 2, seed=8), randn(2, 2, 5, seed=9)
    new = lazy.assign(a, keys, values)
    assert new.rank == lazy.rank + 4 and lazy.rank == 5  # deferred; the original is unchanged
    torch.testing.assert_close(new.dense(), dense + a @ (values - keys.mT @ dense))


@deferring()
def test_plus_defers_then_folds_and_leaves_the_original():
    start = LowRankSum(randn(1, 4, 4))
    lazy, total = start, start.dense().clone()
    for i in range(FOLD_RANK + 1):
        a, b = randn(1, 4, 1, seed=i), randn(1, 1, 4, seed=100 + i)
        lazy, total = lazy.plus(a, b), total + a @ b
        assert lazy.rank == (i + 1 if i < FOLD_RANK else 0)
    torch.testing.assert_close(lazy.dense(), total)
    assert start.rank == 0 and not torch.equal(start.dense(), total)


def test_small_matrices_fold_at_once(monkeypatch):
    monkeypatch.setattr(lowrank, "EAGER_SIZE", 16)
    lazy = LowRankSum(randn(1, 4, 4)).plus(randn(1, 4, 1), randn(1, 1, 4))
    assert lazy.rank == 0


def test_factors_must_come_in_pairs():
    try:
        LowRankSum(randn(1, 2, 2), left=randn(1, 2, 1))
    except ValueError as err:
        assert "together" in str(err)
    else:
        raise AssertionError("expected ValueError")


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), forgets=st.integers(1, 20))
@deferring()
def test_long_sequential_runs_past_folds_equal_one_shot(seed, forgets):
    # More updates than FOLD_RANK columns, so both the deferred and the folded paths are used.
    mem = EpisodicMemory(MemoryConfig(slots=64, code_size=16)).to(F64)
    z = randn(1, 50, 16, seed=seed)
    state = mem.empty(1, dtype=F64)
    for i in range(50):
        state = mem.update(state, z[:, i : i + 1])
        if i == 25:
            assert state.memory.shape == (1, 64, 16)  # a read in between folds early; the value must not change
    gone = torch.randperm(50, generator=torch.Generator().manual_seed(seed))[:forgets]
    for i in gone.tolist():
        state = mem.update(state, z[:, i : i + 1], alpha=-1.0)
    kept = torch.ones(50, dtype=torch.bool)
    kept[gone] = False
    never = mem.update(mem.empty(1, dtype=F64), z[:, kept])
    for name in ("memory", "gram_pinv", "free"):
        torch.testing.assert_close(getattr(state, name), getattr(never, name), rtol=1e-8, atol=1e-8)
    q = randn(1, 5, 16, seed=seed + 1)
    torch.testing.assert_close(mem.read(state, q), mem.read(never, q), rtol=1e-8, atol=1e-8)
