"""Recursive memory search over long contexts: splitting, levels, shapes, recovery, API, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import larimar
from larimar.cli import main
from larimar.editing.longcontext import (
    LongAnswer,
    SearchConfig,
    chunk,
    levels_needed,
    read_chunks,
    recursive_search,
    search_level,
    split_context,
)
from larimar.memory import EpisodicMemory, MemoryConfig

C = 16


@pytest.fixture(scope="module")
def memory() -> EpisodicMemory:
    return EpisodicMemory(MemoryConfig(slots=32, code_size=C)).double().eval()


def unit_latents(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, C, generator=g, dtype=torch.float64), dim=-1)


# ------------------------------------------------------------------------------- splitting
def test_split_sentences_and_newlines() -> None:
    text = "Paris is in Italy. Toko Yasuda plays the piano!\nBerlin is in Spain?  Last one"
    assert split_context(text) == ["Paris is in Italy.", "Toko Yasuda plays the piano!", "Berlin is in Spain?", "Last one"]


def test_split_keeps_closing_quotes_with_their_sentence() -> None:
    assert split_context('He said "hi." Next one. (Aside.) Done') == ['He said "hi."', "Next one.", "(Aside.)", "Done"]


def test_split_list_is_taken_as_chunks_and_long_ones_are_cut() -> None:
    assert split_context([" a b ", "", "c"]) == ["a b", "c"]
    assert split_context(["w " * 10], max_words=4) == ["w w w w", "w w w w", "w w"]


@pytest.mark.parametrize("context", ["", "  \n ", [], ["", " "]])
def test_empty_context_is_an_error(context: object) -> None:
    with pytest.raises(ValueError, match="context is empty"):
        split_context(context)  # type: ignore[arg-type]


def test_non_text_context_is_an_error() -> None:
    with pytest.raises(ValueError, match="string or a list of strings"):
        split_context([1, 2])  # type: ignore[list-item]


# ------------------------------------------------------------------------------- config
@pytest.mark.parametrize(("fan_out", "keep"), [(1, 1), (0, 1), (4, 4), (4, 0), (2, 2)])
def test_invalid_fan_out_or_keep(fan_out: int, keep: int) -> None:
    with pytest.raises(ValueError, match="fan_out|keep"):
        SearchConfig(fan_out=fan_out, keep=keep)


# ------------------------------------------------------------------------------- structure
def test_chunk_pads_the_last_chunk() -> None:
    z = unit_latents(7)
    chunks, mask = chunk(z, 3)
    assert chunks.shape == (3, 3, C) and mask.shape == (3, 3)
    assert mask.sum() == 7 and not mask[2, 1:].any()
    assert torch.equal(chunks.reshape(-1, C)[:7], z) and (chunks[2, 1:] == 0).all()


def test_batched_write_read_shapes(memory: EpisodicMemory) -> None:
    chunks, _ = chunk(unit_latents(10), 4)  # (3, 4, C)
    q_read, item_read = read_chunks(memory, chunks, unit_latents(1, seed=1)[0])
    assert q_read.shape == (3, C) and item_read.shape == (3, 4, C)
    # exact pinv: every written item reads back as itself; padding reads as zero
    assert torch.allclose(item_read, chunks, atol=1e-8)


def test_one_level_keeps_k_per_memory(memory: EpisodicMemory) -> None:
    z = unit_latents(10)
    items, origin, level = search_level(memory, z, torch.arange(10), z[0], SearchConfig(fan_out=4, keep=2))
    # chunks of 4, 4, 2 -> 2 + 2 + 2 readouts; the query's own item is kept
    assert items.shape == (6, C) and origin.shape == (6,) and level.memories == 3 and level.kept == 6
    assert 0 in origin.tolist() and level.best == 0


@pytest.mark.parametrize("fan_out", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 16, 17, 64, 65])
def test_levels_count_is_ceil_log_fan_out(memory: EpisodicMemory, n: int, fan_out: int) -> None:
    result = recursive_search(memory, unit_latents(n), unit_latents(1, seed=9)[0], SearchConfig(fan_out, 1))
    assert len(result.levels) == levels_needed(n, fan_out)
    assert fan_out ** (len(result.levels) - 1) < n <= fan_out ** len(result.levels) or n == 1
    assert result.levels[-1].memories == 1 and result.z.shape == (C,)


@pytest.mark.parametrize(("fan_out", "keep"), [(2, 1), (3, 2), (4, 3), (5, 4), (8, 7), (16, 3)])
@pytest.mark.parametrize("n", [1, 5, 6, 17, 100])
def test_hierarchy_terminates_for_any_keep(memory: EpisodicMemory, n: int, fan_out: int, keep: int) -> None:
    result = recursive_search(memory, unit_latents(n), unit_latents(1, seed=3)[0], SearchConfig(fan_out, keep))
    sizes = [level.items for level in result.levels]
    assert sizes[0] == n and all(a > b for a, b in zip(sizes, sizes[1:])) and sizes[-1] <= fan_out


# ------------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("score", ["similarity", "weight"])
@pytest.mark.parametrize(("n", "fan_out", "keep"), [(50, 4, 1), (200, 8, 2), (64, 2, 1)])
def test_search_recovers_the_nearest_written_latent(memory: EpisodicMemory, n: int, fan_out: int, keep: int,
                                                    score: str) -> None:
    """Identity-like setup: latents are the embeddings; the query is a noisy copy of one of them."""
    z = unit_latents(n, seed=n)
    g = torch.Generator().manual_seed(1)
    for target in (0, n // 2, n - 1):
        query = z[target] + 0.1 * torch.randn(C, generator=g, dtype=torch.float64)
        config = SearchConfig(fan_out, keep, score=score, readout="best")  # type: ignore[arg-type]
        result = recursive_search(memory, z, query, config)
        assert result.best == target
        assert torch.allclose(result.z, z[target], atol=1e-8)


def test_query_readout_is_the_projection_onto_the_last_episode(memory: EpisodicMemory) -> None:
    z = unit_latents(4)
    query = unit_latents(1, seed=5)[0]
    result = recursive_search(memory, z, query, SearchConfig(fan_out=8))  # one level: one memory
    projection = query @ torch.linalg.pinv(z) @ z
    assert torch.allclose(result.z, projection, atol=1e-8)


def test_episode_readout_reads_the_winner_alone(memory: EpisodicMemory) -> None:
    z = unit_latents(40, seed=3)
    query = z[17] + 0.05 * unit_latents(1, seed=9)[0]
    result = recursive_search(memory, z, query, SearchConfig(fan_out=4, readout="episode"))
    assert result.best == 17
    # a one-item memory read with q gives the item scaled by its least-squares weight
    expected = (query @ z[17]) / (z[17] @ z[17]) * z[17]
    assert torch.allclose(result.z, expected, atol=1e-8)
    with pytest.raises(ValueError, match="'episode'"):
        SearchConfig(readout="nope")  # type: ignore[arg-type]


def test_empty_latents_are_an_error(memory: EpisodicMemory) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        recursive_search(memory, torch.zeros(0, C, dtype=torch.float64), torch.zeros(C, dtype=torch.float64))


# ------------------------------------------------------------------------------- API and CLI
FACTS = ["Toko Yasuda plays the piano.", "Paris is the capital of France.", "The cat sat on the mat in the park.",
         "Berlin is the capital of Germany.", "A dog ran across the green field.", "The river flows north into the sea."]


def test_answer_returns_text_and_trace(lm: larimar.Larimar) -> None:
    out = lm.answer("Toko Yasuda plays the", " ".join(FACTS), fan_out=2, keep=1, max_new_tokens=3)
    assert isinstance(out, LongAnswer) and isinstance(out.text, str)
    assert out.chunks == tuple(FACTS) and out.best_chunk in FACTS
    assert len(out.levels) == levels_needed(len(FACTS), 2) and out.seconds > 0


def test_answer_error_paths(lm: larimar.Larimar) -> None:
    with pytest.raises(ValueError, match="context is empty"):
        lm.answer("Toko Yasuda plays the", "")
    with pytest.raises(ValueError, match="question is empty"):
        lm.answer(" ", FACTS)
    with pytest.raises(ValueError, match="fan_out"):
        lm.answer("Toko Yasuda plays the", FACTS, fan_out=1)


def test_cli_ask_with_context(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    context = tmp_path / "context.txt"
    context.write_text("\n".join(FACTS))
    argv = ["ask", "Toko Yasuda plays the", "--context", str(context), "--model", str(model_dir),
            "--fan-out", "2", "--keep", "1", "--max-new-tokens", "3"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "6 chunks" in err and "3 levels" in err


def test_cli_ask_context_errors(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(["ask", "Toko Yasuda plays the", "--context", str(empty), "--model", str(model_dir)]) == 2
    assert "context is empty" in capsys.readouterr().err
    assert main(["ask", "Q", "--context", str(tmp_path / "missing.txt"), "--model", str(model_dir)]) == 2
    assert "missing.txt" in capsys.readouterr().err
    ok = tmp_path / "ok.txt"
    ok.write_text("Paris is in Italy.")
    assert main(["ask", "Q", "--context", str(ok), "--model", str(model_dir), "--fan-out", "1"]) == 2
    assert "fan_out" in capsys.readouterr().err
