"""Long-context benchmark: the CounterFact context generator and the side-by-side protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import larimar
from larimar.editing.longcontext import SearchConfig
from larimar.eval.datasets import load_cases
from larimar.eval.longcontext import (
    BenchConfig,
    LongContextCase,
    load_contexts,
    make_context,
    make_contexts,
    run_benchmark,
    save_contexts,
    summarize,
    summary_markdown,
    write_outputs,
)
from tests.editing.tiny_larimar import save_tiny_larimar

SUBJECTS = ["Toko Yasuda", "Paris", "Berlin", "John Lennon", "Danielle Darrieux", "The river", "A dog", "The cat",
            "BBC One", "Madrid", "Rome", "Oslo"]


def records() -> list[dict[str, object]]:
    """EasyEdit flat CounterFact records, one duplicated prompt among them."""
    out = [{"case_id": i, "prompt": f"{s} is located in", "target_new": f"place{i}", "subject": s,
            "ground_truth": "x", "rephrase_prompt": f"{s} is in", "locality_prompt": "Cats are",
            "locality_ground_truth": "cute"} for i, s in enumerate(SUBJECTS)]
    return out + [{**out[0], "case_id": 99, "target_new": "elsewhere"}]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list:
    path = tmp_path_factory.mktemp("cf") / "counterfact-train.json"
    path.write_text(json.dumps(records()))
    return load_cases(path)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> larimar.Larimar:
    return larimar.load(save_tiny_larimar(tmp_path_factory.mktemp("tiny-larimar")))


# ------------------------------------------------------------------------------- generator
def test_context_is_deterministic_and_seeded(cases: list) -> None:
    a, b = make_contexts(cases, sizes=(4, 8), questions=3, seed=0), make_contexts(cases, sizes=(4, 8), questions=3, seed=0)
    assert a == b
    assert make_contexts(cases, sizes=(8,), questions=3, seed=1) != make_contexts(cases, sizes=(8,), questions=3, seed=0)
    assert [c.id for c in a] == ["n4-q0", "n4-q1", "n4-q2", "n8-q0", "n8-q1", "n8-q2"]


def test_question_is_the_rewrite_prompt_of_one_fact(cases: list) -> None:
    for c in make_contexts(cases, sizes=(1, 5, 12), questions=4):
        assert c.facts[c.target_index] == f"{c.question} {c.answer}."
        prompts = [f.rsplit(" ", 1)[0] for f in c.facts]
        assert len(set(prompts)) == c.n  # distinct prompts: every question has one answer


def test_duplicate_prompts_are_dropped_and_size_is_checked(cases: list) -> None:
    assert make_context(cases, 12, 0).n == 12
    with pytest.raises(ValueError, match="context size"):
        make_context(cases, 13, 0)  # 13 records but only 12 distinct prompts
    with pytest.raises(ValueError, match="questions"):
        make_contexts(cases, sizes=(4,), questions=0)


def test_save_and_load_round_trip(cases: list, tmp_path: Path) -> None:
    contexts = make_contexts(cases, sizes=(3, 6), questions=2)
    assert load_contexts(save_contexts(contexts, tmp_path / "ctx.jsonl")) == contexts
    with pytest.raises(FileNotFoundError):
        load_contexts(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------- protocol
def test_benchmark_rows_and_summary(lm: larimar.Larimar, cases: list, tmp_path: Path) -> None:
    contexts = make_contexts(cases, sizes=(2, 12), questions=2)
    config = BenchConfig(search=SearchConfig(fan_out=2), max_new_tokens=2)
    rows = run_benchmark(lm, contexts, config=config)
    assert len(rows) == len(contexts) * 3
    for row in rows:
        assert row["seconds"] >= 0 and row["method"] in ("in_prompt", "flat", "recursive")
        assert row["skipped"] or isinstance(row["exact"], bool)
        assert (row["retrieved"] is not None) == (row["method"] == "recursive")
    # the tiny decoder has 128 positions: 12 facts do not fit its prompt, 2 do
    in_prompt = {r["n"]: r for r in rows if r["method"] == "in_prompt"}
    assert in_prompt[12]["skipped"] and "exceeds" in in_prompt[12]["note"] and not in_prompt[2]["skipped"]
    summary = summarize(rows)
    assert [(s["n"], s["method"]) for s in summary] == [(n, m) for n in (2, 12) for m in ("in_prompt", "flat", "recursive")]
    table = summary_markdown(summary)
    assert table.count("\n") == 2 + len(summary) and "exceeds" in table
    paths = write_outputs(rows, tmp_path / "out", {"model": "tiny"})
    assert all(p.is_file() for p in paths.values())
    assert json.loads(paths["summary"].read_text())["model"] == "tiny"


def test_max_prompt_facts_skips_in_prompt(lm: larimar.Larimar, cases: list) -> None:
    [ctx] = make_contexts(cases, sizes=(3,), questions=1)
    [row] = run_benchmark(lm, [ctx], ["in_prompt"], BenchConfig(max_prompt_facts=2, max_new_tokens=1))
    assert row["skipped"] and "max-prompt-facts" in row["note"]


def test_unknown_method_is_an_error(lm: larimar.Larimar, cases: list) -> None:
    with pytest.raises(ValueError, match="unknown methods"):
        run_benchmark(lm, [], ["oracle"])


def test_case_n() -> None:
    assert LongContextCase("x", ["a.", "b."], "a", "b", 0, 0).n == 2
