"""Properties of write/read/update in float64 (and a float32 smoke check)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from larimar.memory import EpisodicMemory, MemoryConfig, MemoryInputError

F64 = torch.float64


def make(slots=64, code=16, method="exact", dtype=F64, **kw):
    steps = 60 if method == "iterative" else 15
    return EpisodicMemory(MemoryConfig(slots=slots, code_size=code, pinv=method, pinv_steps=steps, **kw)).to(dtype)


def latents(b, e, c, seed=0, dtype=F64):
    return torch.randn(b, e, c, generator=torch.Generator().manual_seed(seed), dtype=dtype)


SHAPES = [(1, 1, 64, 16), (2, 5, 64, 16), (3, 8, 8, 16), (2, 12, 32, 24)]  # (B, E, K, C) with E <= K, E < C


@pytest.mark.parametrize("b,e,k,c", SHAPES)
@pytest.mark.parametrize("method", ["exact", "iterative"])
def test_write_then_read_returns_written_latents(b, e, k, c, method):
    mem = make(k, c, method)
    z = latents(b, e, c)
    state = mem.write(z)
    tol = 1e-9 if method == "exact" else 1e-6
    assert torch.allclose(mem.read(state, z), z, atol=tol)


@pytest.mark.parametrize("b,e,k,c", SHAPES)
@pytest.mark.parametrize("method", ["exact", "iterative"])
def test_readout_is_orthogonal_projection_onto_span(b, e, k, c, method):
    mem = make(k, c, method)
    z = latents(b, e, c)
    q = latents(b, 7, c, seed=1)
    out = mem.read(mem.write(z), q)
    projector = torch.linalg.pinv(z) @ z  # (B, C, C) onto the row space of Z
    tol = 1e-9 if method == "exact" else 1e-6
    assert torch.allclose(out, q @ projector, atol=tol)


def test_single_fact_readout_formula():
    mem = make(16, 8)
    z = latents(1, 1, 8)
    q = latents(1, 1, 8, seed=3)
    expected = (q * z).sum() / z.square().sum() * z
    assert torch.allclose(mem.read(mem.write(z), q), expected, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(e=st.integers(1, 10), seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
def test_sequential_updates_equal_one_shot_write(e, seed, scale):
    mem = make(32, 16)
    z = scale * latents(2, e, 16, seed)
    q = scale * latents(2, 4, 16, seed + 1)
    state = mem.empty(2, dtype=F64)
    for i in range(e):
        state = mem.update(state, z[:, i : i + 1])
    one_shot = mem.write(z)
    assert torch.allclose(state.memory, one_shot.memory, atol=1e-9 * scale, rtol=1e-8)
    assert torch.allclose(mem.read(state, q), mem.read(one_shot, q), atol=1e-8 * scale)


def test_block_update_and_write_sequential_match_item_by_item():
    mem = make(32, 16)
    z = latents(2, 6, 16)
    block = mem.update(mem.empty(2, dtype=F64), z)
    assert torch.allclose(block.memory, mem.write(z, sequential=True).memory)
    assert torch.allclose(block.memory, mem.write(z).memory, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_write_then_forget_restores_previous_state(n, seed):
    mem = make(32, 16)
    z = latents(1, n + 1, 16, seed)
    before = mem.update(mem.empty(1, dtype=F64), z[:, :n])
    after = mem.update(mem.update(before, z[:, n:]), z[:, n:], alpha=-1.0)
    for name in ("memory", "gram_pinv", "free"):
        assert torch.allclose(getattr(after, name), getattr(before, name), atol=1e-8), name


@pytest.mark.parametrize("overfull", [False, True])
def test_forgetting_one_item_leaves_others_unchanged(overfull):
    # overfull: more items than key directions (K=8 < N=12), so forgetting is a Sherman-Morrison downdate.
    k = 8 if overfull else 32
    mem = make(k, 16)
    n = 12
    z = latents(1, n, 16, seed=5)
    full = mem.update(mem.empty(1, dtype=F64), z)
    forgot = mem.update(full, z[:, 4:5], alpha=-1.0)
    never = mem.update(mem.empty(1, dtype=F64), torch.cat([z[:, :4], z[:, 5:]], dim=1))
    q = latents(1, 9, 16, seed=6)
    assert torch.allclose(forgot.memory, never.memory, atol=1e-8)
    assert torch.allclose(mem.read(forgot, q), mem.read(never, q), atol=1e-8)
    if not overfull:
        others = torch.cat([z[:, :4], z[:, 5:]], dim=1)
        assert torch.allclose(mem.read(forgot, others), others, atol=1e-8)


@pytest.mark.parametrize("addressing", ["reference", "gaussian"])
def test_reference_keys_recall_key_value_pairs(addressing):
    k, c = 16, 24
    mem = make(k, c, addressing=addressing)
    n = k if addressing == "reference" else 6
    z_key = latents(1, n, c, seed=7)
    if addressing == "gaussian":  # keys near distinct reference rows: nearly one-hot
        z_key = mem.prior.detach()[:n].unsqueeze(0) + 0.05 * z_key
    z_value = latents(1, n, c, seed=8)
    keys = mem.address(z_key)
    assert keys.shape == (1, n, k)
    state = mem.write(z_value, keys=keys)
    assert torch.allclose(mem.read(state, z_key, keys=mem.address(z_key)), z_value, atol=1e-8)
    seq = mem.update(mem.empty(1, dtype=F64), z_value, keys=keys)
    assert torch.allclose(mem.read(seq, z_key, keys=mem.address(z_key)), z_value, atol=1e-8)


def test_gaussian_keys_are_normalised_and_nearly_one_hot():
    mem = make(16, 8, addressing="gaussian")
    z = mem.prior.detach()[3:4].unsqueeze(0) + 1e-3
    w = mem.address(z)
    assert torch.allclose(w.sum(-1), torch.ones(1, 1, dtype=F64))
    assert w[0, 0, 3] > 0.99


@pytest.mark.parametrize("method", ["exact", "iterative"])
def test_gradients_flow_through_write_and_read(method):
    mem = make(32, 16, method)
    z = latents(2, 4, 16).requires_grad_()
    q = latents(2, 3, 16, seed=1).requires_grad_()
    out = mem.read(mem.write(z), q)
    out.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert mem.prior.grad is not None and torch.isfinite(mem.prior.grad).all()


def test_gradcheck_small():
    mem = make(6, 5)
    z = latents(1, 3, 5).requires_grad_()
    q = latents(1, 2, 5, seed=2)
    assert torch.autograd.gradcheck(lambda x: mem.read(mem.write(x), q), (z,))


def test_sampled_read_and_kl():
    mem = make(32, 16)
    z = latents(2, 4, 16)
    state = mem.write(z)
    out = mem.read_sampled(state, z)
    assert out.z.shape == (2, 4, 16) and out.weights.shape == (2, 4, 32) and out.kl.shape == (2, 4)
    w_mean = mem.read_weights(state, z)
    log_var = mem.read_log_var.detach()
    expected = 0.5 * (w_mean.square() + log_var.exp() - 1 - log_var).sum(-1)
    assert torch.allclose(out.kl, expected)
    out.kl.sum().backward()
    assert mem.read_log_var.grad is not None


def test_generate_from_prior_weights_lies_in_memory_row_space():
    mem = make(32, 16)
    z = latents(1, 3, 16)
    samples = mem.generate(mem.write(z), 5)
    assert samples.shape == (1, 5, 16)
    projector = torch.linalg.pinv(z) @ z
    assert torch.allclose(samples @ projector, samples, atol=1e-8)


def test_observation_noise_only_in_training():
    mem = make(32, 16, observation_noise=0.1)
    z = latents(1, 3, 16)
    mem.eval()
    assert torch.equal(mem.write(z).memory, mem.write(z).memory)
    mem.train()
    assert not torch.equal(mem.write(z).memory, mem.write(z).memory)


def test_float32_close_to_float64():
    mem32, mem64 = make(64, 16, dtype=torch.float32), make(64, 16)
    z = latents(1, 10, 16)
    s32 = mem32.update(mem32.empty(1, dtype=torch.float32), z.float())
    s64 = mem64.update(mem64.empty(1, dtype=F64), z)
    assert torch.allclose(s32.memory.double(), s64.memory, atol=1e-4)


# ------------------------------------------------------------------------------- errors
def test_wrong_width_is_named():
    mem = make(16, 8)
    with pytest.raises(MemoryInputError, match="code size 8; got latents of width 5"):
        mem.write(latents(1, 2, 5))


def test_missing_batch_dimension_says_how_to_fix():
    with pytest.raises(MemoryInputError, match="unsqueeze"):
        make(16, 8).write(latents(1, 2, 8)[0])


def test_empty_input():
    with pytest.raises(MemoryInputError, match="empty"):
        make(16, 8).write(torch.zeros(1, 0, 8, dtype=F64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_keeps_state(bad):
    mem = make(16, 8)
    state = mem.update(mem.empty(1, dtype=F64), latents(1, 2, 8))
    snapshot = state.memory.clone()
    z = latents(1, 1, 8)
    z[0, 0, 3] = bad
    with pytest.raises(MemoryInputError, match="NaN or infinite"):
        mem.update(state, z)
    with pytest.raises(MemoryInputError, match="NaN or infinite"):
        mem.write(z)
    assert torch.equal(state.memory, snapshot)


def test_forgetting_a_never_written_item_is_refused():
    mem = make(16, 8)
    state = mem.update(mem.empty(1, dtype=F64), latents(1, 2, 8))
    with pytest.raises(MemoryInputError, match="never written"):
        mem.update(state, latents(1, 1, 8, seed=9), alpha=-1.0)


def test_update_needs_key_statistics():
    mem = make(16, 8)
    with pytest.raises(MemoryInputError, match="no key statistics"):
        mem.update(mem.write(latents(1, 2, 8)), latents(1, 1, 8))


def test_batch_and_dtype_mismatch():
    mem = make(16, 8)
    state = mem.empty(2, dtype=F64)
    with pytest.raises(MemoryInputError, match="holds 2 memories"):
        mem.update(state, latents(3, 1, 8))
    with pytest.raises(MemoryInputError, match="move one with .to"):
        mem.update(state, latents(2, 1, 8, dtype=torch.float32))


def test_bad_alpha_and_keys():
    mem = make(16, 8)
    state = mem.empty(1, dtype=F64)
    with pytest.raises(MemoryInputError, match="non-zero"):
        mem.update(state, latents(1, 1, 8), alpha=0.0)
    with pytest.raises(MemoryInputError, match="alpha must be a number"):
        mem.update(state, latents(1, 2, 8), alpha=torch.ones(3, dtype=F64))
    with pytest.raises(MemoryInputError, match="keys must have shape"):
        mem.write(latents(1, 2, 8), keys=torch.ones(1, 2, 5, dtype=F64))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="pinv must be one of"):
        MemoryConfig(pinv="svd")
    with pytest.raises(ValueError, match="slots must be >= 1"):
        MemoryConfig(slots=0)
    with pytest.raises(ValueError, match="unknown memory config keys"):
        MemoryConfig.from_dict({"slots": 4, "bogus": 1})
    assert MemoryConfig.from_dict(MemoryConfig(slots=4).to_dict()) == MemoryConfig(slots=4)


def test_import_does_not_pull_transformers():
    import subprocess
    import sys

    code = "import sys, larimar.memory; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reference_keys_gather_when_the_reference_pinv_selects_columns():
    """With the identity prior (as initialised) the reference pseudo-inverse selects
    coordinates: `address` gathers them, equal to the product; any other prior multiplies."""
    from larimar.memory.addressing import column_selection, reference_keys

    mem = make(16, 24, key_size=20)
    z = latents(2, 3, 24)
    with torch.no_grad():
        ref, selection = mem._reference(z)
        assert selection is not None and selection.tolist() == list(range(16))
        assert torch.equal(mem.address(z), mem._key(z) @ ref)
        mem.prior.mul_(2.0)  # a changed prior: the cache is renewed and the keys are a product again
        ref, selection = mem._reference(z)
        assert selection is None and torch.allclose(mem.address(z), mem._key(z) @ ref)
    picks = torch.zeros(5, 3, dtype=F64)
    picks[[4, 0, 4], [0, 1, 2]] = 1.0  # columns e_4, e_0, e_4: a row may be picked twice
    assert column_selection(picks).tolist() == [4, 0, 4]
    w = latents(1, 2, 5)
    assert torch.equal(reference_keys(w, picks, column_selection(picks)), w @ picks)
    for bad in (picks * 0.5, torch.cat([picks, picks]), picks + picks.roll(1, 0)):  # not unit columns
        assert column_selection(bad) is None
