import pytest
import torch

from larimar.memory import EpisodicMemory, MemoryConfig, MemoryState, load_metadata


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sequential", [False, True])
def test_save_load_round_trip_is_exact(tmp_path, dtype, sequential):
    mem = EpisodicMemory(MemoryConfig(slots=16, code_size=8)).to(dtype)
    z = torch.randn(2, 3, 8, dtype=dtype)
    state = mem.write(z, sequential=sequential)
    path = tmp_path / "state.safetensors"
    state.save(path, metadata={"facts": ["a", "b"], "n": 3})
    loaded = MemoryState.load(path)
    assert torch.equal(loaded.memory, state.memory)
    assert loaded.sequential == sequential
    if sequential:
        assert torch.equal(loaded.gram_pinv, state.gram_pinv) and torch.equal(loaded.free, state.free)
        z2 = torch.randn(2, 1, 8, dtype=dtype)
        # derived values: the same products on equal inputs; BLAS may order sums differently
        # with operand alignment or thread count, so these agree to rounding, not to the bit
        torch.testing.assert_close(mem.update(loaded, z2).memory, mem.update(state, z2).memory)
    assert load_metadata(path) == {"facts": ["a", "b"], "n": 3}
    q = torch.randn(2, 4, 8, dtype=dtype)
    torch.testing.assert_close(mem.read(loaded, q), mem.read(state, q))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no memory state file"):
        MemoryState.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable memory state"):
        MemoryState.load(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a larimar memory state"):
        MemoryState.load(other)


def test_state_validation():
    with pytest.raises(ValueError, match="batch, slots, code_size"):
        MemoryState(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="together"):
        MemoryState(torch.zeros(1, 4, 2), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="gram_pinv must have shape"):
        MemoryState(torch.zeros(1, 4, 2), torch.zeros(1, 3, 3), torch.zeros(1, 3, 3))
