"""Single-fact protocol end to end with the dummy editor: metrics, files, resume, table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from larimar.eval.datasets import EditCase, LocalityPrompt
from larimar.eval.editors import DummyEditor
from larimar.eval.protocols import (
    RECORDS_FILE,
    read_records,
    run_single_fact,
    summarize_single_fact,
    summary_table,
)


def make_cases(n: int) -> list[EditCase]:
    return [
        EditCase(
            case_id=str(i), subject=f"Subject{i}", prompt=f"Subject{i} plays the",
            target_new=f"new{i}", target_true=f"true{i}",
            paraphrase_prompts=[f"Subject{i} performs on the", f"Yes. Subject{i} is good at"],
            neighborhood_prompts=[LocalityPrompt(f"Other{i} plays the", f"true{i}")],
            generation_prompts=[f"Subject{i} is known for"],
        )
        for i in range(n)
    ]


class CountingEditor(DummyEditor):
    """Dummy editor that counts edits, to check what a resumed run re-does."""

    def __init__(self) -> None:
        super().__init__()
        self.n_edits = 0

    def edit(self, cases):  # type: ignore[no-untyped-def]
        self.n_edits += 1
        super().edit(cases)


def test_single_fact_end_to_end(tmp_path: Path) -> None:
    cases = make_cases(4)
    summary = run_single_fact(DummyEditor(), cases, tmp_path, run_config={"dataset": "fixture"})
    assert summary["n_cases"] == 4 and summary["editor"] == "dummy"
    assert summary["ES"] == summary["PS"] == 100.0
    assert summary["gen_exact"] == summary["gen_contains"] == 100.0
    assert summary["ES_mag"] > 0 and summary["edit_time_s_mean"] >= 0
    # neighbourhood prompts are untouched by the dummy edit: NS is whatever the base scores say
    base = DummyEditor()
    want = sum(
        100.0 * (base.score([c.neighborhood_prompts[0].prompt], [c.target_true])[0]
                 < base.score([c.neighborhood_prompts[0].prompt], [c.target_new])[0])
        for c in cases) / 4
    assert summary["NS"] == pytest.approx(want)
    records = [json.loads(line) for line in (tmp_path / RECORDS_FILE).read_text().splitlines()]
    assert [r["case_id"] for r in records] == ["0", "1", "2", "3"]
    assert len(records[0]["paraphrase"]) == 2 and records[0]["generation"]["answer"] == "new0"
    assert json.loads((tmp_path / "config.json").read_text())["dataset"] == "fixture"
    assert json.loads((tmp_path / "summary.json").read_text())["ES"] == 100.0


def test_resume_skips_done_cases_and_torn_lines(tmp_path: Path) -> None:
    cases = make_cases(5)
    first = CountingEditor()
    run_single_fact(first, cases[:3], tmp_path)
    with (tmp_path / RECORDS_FILE).open("a") as fh:
        fh.write('{"case_id": "3", "rew')  # interrupted write
    second = CountingEditor()
    summary = run_single_fact(second, cases, tmp_path)
    assert (first.n_edits, second.n_edits) == (3, 2)
    assert summary["n_cases"] == 5
    assert sorted(read_records(tmp_path / RECORDS_FILE)) == ["0", "1", "2", "3", "4"]
    again = CountingEditor()
    assert run_single_fact(again, cases, tmp_path) == summary and again.n_edits == 0


def test_summary_over_requested_cases_only(tmp_path: Path) -> None:
    cases = make_cases(3)
    run_single_fact(DummyEditor(), cases, tmp_path)
    assert run_single_fact(DummyEditor(), cases[:1], tmp_path)["n_cases"] == 1


def test_fluency_and_no_generation(tmp_path: Path) -> None:
    summary = run_single_fact(DummyEditor(), make_cases(2), tmp_path, max_new_tokens=0, fluency_tokens=5)
    assert summary["gen_exact"] != summary["gen_exact"]  # nan: nothing generated
    assert summary["fluency"] == pytest.approx(0.0)  # " unknown." has one bigram, entropy 0
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert stored["gen_exact"] is None  # nan is written as null


def test_case_without_target_true_is_rejected(tmp_path: Path) -> None:
    case = make_cases(1)[0]
    case.target_true = None
    with pytest.raises(ValueError, match="target_true, which this case lacks"):
        run_single_fact(DummyEditor(), [case], tmp_path)


def test_empty_summary_and_table() -> None:
    empty = summarize_single_fact([])
    assert empty["n_cases"] == 0
    table = summary_table([{"editor": "none", **empty}, {"editor": "x", "ES": 99.04, "n_cases": 2}])
    lines = table.splitlines()
    assert lines[0].startswith("| editor | n_cases | ES | PS | NS | S |")
    assert lines[1].count("---") == len(lines[0].split("|")) - 2
    assert "| none | 0 | - |" in lines[2] and "| x | 2 | 99.0 |" in lines[3]
