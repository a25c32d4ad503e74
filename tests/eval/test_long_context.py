"""Long-context benchmark: the CounterFact context generator and the side-by-side protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import larimar
from larimar.editing.longcontext import SearchConfig
from larimar.eval.datasets import load_cases
from larimar.eval.protocols.long_context import (
    BenchConfig,
    LongContextCase,
    load_contexts,
    make_context,
    make_contexts,
    merge_rows,
    read_rows,
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
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_larimar(tmp_path_factory.mktemp("tiny-larimar"))


@pytest.fixture(scope="module")
def lm(tiny_dir: Path) -> larimar.Larimar:
    return larimar.load(tiny_dir)


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


# ------------------------------------------------------------------------------- resume and merge
def test_done_pairs_are_skipped_and_rows_streamed(lm: larimar.Larimar, cases: list) -> None:
    contexts = make_contexts(cases, sizes=(2,), questions=2)
    seen: list[dict] = []
    rows = run_benchmark(lm, contexts, ["flat", "recursive"], BenchConfig(max_new_tokens=1),
                         done={("n2-q0", "flat")}, on_row=seen.append)
    assert [(r["id"], r["method"]) for r in rows] == [("n2-q0", "recursive"), ("n2-q1", "flat"), ("n2-q1", "recursive")]
    assert seen == rows


def test_read_rows_drops_a_torn_last_line_only(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n{"id": "c", "n')
    assert [r["id"] for r in read_rows(path)] == ["a", "b"]
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_rows(path)
    with pytest.raises(FileNotFoundError, match="run the benchmark"):
        read_rows(tmp_path / "missing.jsonl")


def test_merge_keeps_one_row_per_pair_and_rejects_other_contexts() -> None:
    a = [{"id": "n2-q0", "method": "flat", "question": "q", "n": 2, "x": 1}]
    b = [{"id": "n2-q0", "method": "flat", "question": "q", "n": 2, "x": 2},
         {"id": "n2-q0", "method": "recursive", "question": "q", "n": 2, "x": 3}]
    assert [r["x"] for r in merge_rows(a, b)] == [1, 3]
    with pytest.raises(ValueError, match="disagree"):
        merge_rows(a, [{**a[0], "question": "other"}])


def _script():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "long_context.py"
    spec = importlib.util.spec_from_file_location("long_context_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_resumes_and_merges_shards(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "cf.json"
    data.write_text(json.dumps(records()))
    script = _script()
    common = ["--model", str(tiny_dir), "--data", str(data), "--sizes", "2,3", "--questions", "2",
              "--max-new-tokens", "1", "--threads", "1"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert script.main([*common, "--methods", "flat", "--out", str(a)]) == 0
    # an interrupted shard: keep two rows and a torn third, then resume
    script.main([*common, "--methods", "recursive", "--out", str(b)])
    full = (b / "rows.jsonl").read_text().splitlines()
    (b / "rows.jsonl").write_text("\n".join(full[:2]) + "\n" + full[2][:10])
    assert script.main([*common, "--methods", "recursive", "--out", str(b), "--resume"]) == 0
    resumed = read_rows(b / "rows.jsonl")
    assert [r["id"] for r in resumed] == [json.loads(line)["id"] for line in full]
    assert resumed[:2] == [json.loads(line) for line in full[:2]]
    merged = tmp_path / "merged"
    capsys.readouterr()
    assert script.main(["--merge", str(a), str(b), "--out", str(merged)]) == 0
    summary = json.loads((merged / "summary.json").read_text())
    assert {(r["n"], r["method"]) for r in summary["rows"]} == {(n, m) for n in (2, 3) for m in ("flat", "recursive")}
    assert "| 3 | recursive |" in capsys.readouterr().out
    # resuming into a folder written from other contexts is refused
    with pytest.raises(SystemExit, match="other contexts"):
        script.main([*common, "--methods", "recursive", "--out", str(b), "--resume", "--seed", "1"])
