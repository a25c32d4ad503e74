import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from larimar.memory import exact_pinv, iterative_pinv, pinv
from larimar.memory.pinv import gram_pinv


def _random(shape, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("shape", [(6, 20), (20, 6), (3, 8, 8), (2, 16, 64)])
def test_iteration_converges_to_exact_pinv(shape):
    a = _random(shape)
    exact = exact_pinv(a)
    errors = [(iterative_pinv(a, steps) - exact).abs().max().item() for steps in (5, 10, 20, 40, 80)]
    assert errors[-1] < 1e-10
    assert all(later <= earlier + 1e-12 for earlier, later in zip(errors, errors[1:]))


@settings(max_examples=30, deadline=None)
@given(log_scale=st.floats(min_value=-8, max_value=8), seed=st.integers(0, 1000))
def test_iteration_cannot_diverge_for_any_scale(log_scale, seed):
    a = _random((8, 32), scale=10.0**log_scale, seed=seed)
    x = iterative_pinv(a, steps=60)
    assert torch.isfinite(x).all()
    # Penrose condition A X A = A, relative to the scale of A.
    assert torch.allclose(a @ x @ a, a, atol=1e-9 * a.abs().max().item(), rtol=1e-8)


def test_reference_code_start_would_diverge_where_ours_does_not():
    a = _random((16, 64), scale=100.0)  # latents with norm ~800, far above the ~60 limit of a=5e-4
    x = 5e-4 * a.mT
    for _ in range(15):
        x = 2 * x - x @ a @ x
    assert not torch.isfinite(x).all() or x.abs().max() > 1e10
    assert torch.isfinite(iterative_pinv(a, 15)).all()


def test_zero_matrix_gives_zero_pinv():
    a = torch.zeros(2, 4, 3, dtype=torch.float64)
    assert torch.equal(iterative_pinv(a), torch.zeros(2, 3, 4, dtype=torch.float64))
    assert torch.equal(exact_pinv(a), torch.zeros(2, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_pinv_cuts_tiny_singular_values(dtype):
    u, _ = torch.linalg.qr(_random((10, 10), dtype=dtype))
    s = torch.tensor([1.0, 0.5] + [1e-12] * 8, dtype=dtype)
    a = u * s  # singular values 1, 0.5 and noise
    x = exact_pinv(a)
    assert torch.linalg.matrix_rank(x, rtol=1e-6) == 2
    assert x.abs().max() < 10


def test_dispatch_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown pinv method"):
        pinv(torch.eye(2), method="svd-ish")


@pytest.mark.parametrize("shape", [(6, 20), (20, 6), (2, 64, 16)])
def test_gram_pinv_matches_svd_pinv_on_low_rank_input(shape):
    a = _random(shape)
    low = a[..., :1, :].expand_as(a).clone()  # every row the same: rank one
    for m in (a, low):
        assert torch.allclose(gram_pinv(m, 1e-6), torch.linalg.pinv(m, rtol=1e-6), atol=1e-8)


def test_exact_pinv_falls_back_when_svd_fails(monkeypatch):
    a = _random((3, 64, 16), dtype=torch.float32)
    rtol = 3.5e-4
    expected = torch.linalg.pinv(a.double(), rtol=rtol).float()

    def failing(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: failed to converge")

    monkeypatch.setattr(torch.linalg, "pinv", failing)
    got = exact_pinv(a, rtol=rtol)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-4)
