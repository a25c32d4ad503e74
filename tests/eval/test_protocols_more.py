"""Batch, sequential, forgetting and leakage protocols end to end with dummy editors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from larimar.eval.datasets import EditCase, LocalityPrompt
from larimar.eval.editors import DummyEditor
from larimar.eval.protocols import (
    CHECKPOINTS_FILE,
    RECORDS_FILE,
    read_records,
    run_batch,
    run_forgetting,
    run_leakage,
    run_sequential,
)


def make_cases(n: int) -> list[EditCase]:
    return [
        EditCase(
            case_id=str(i), subject=f"Subject{i:03d}", prompt=f"Subject{i:03d} plays the",
            target_new=f"new{i}", target_true=f"true{i}",
            paraphrase_prompts=[f"Subject{i:03d} performs on the", f"So Subject{i:03d} likes the"],
            neighborhood_prompts=[LocalityPrompt(f"Other{i:03d} plays the", f"true{i}")],
        )
        for i in range(n)
    ]


class CountingEditor(DummyEditor):
    """Dummy editor counting edit calls and edited facts."""

    def __init__(self) -> None:
        super().__init__()
        self.n_calls = 0
        self.n_facts = 0

    def edit(self, cases: Sequence[EditCase]) -> None:
        self.n_calls += 1
        self.n_facts += len(cases)
        super().edit(cases)


class NoForgetEditor(DummyEditor):
    def forget(self, case_ids: Sequence[str]) -> None:
        raise NotImplementedError("this editor cannot forget")


class KnowingEditor(DummyEditor):
    """Knows every fact: unedited, it answers ``target_true``; an "unknown" edit hides it from
    greedy decoding, but samples from paraphrase prompts still leak it."""

    def __init__(self, cases: Sequence[EditCase]) -> None:
        super().__init__()
        self.truth = {c.subject: c.target_true for c in cases}

    def generate(self, prompts: Sequence[str], max_new_tokens: int,
                 temperature: float = 0.0) -> list[str]:
        out = []
        for p in prompts:
            subject = next(s for s in self.truth if s in p)
            edited = self._edit_for(p) is not None
            leak = temperature > 0 and "performs" in p
            out.append(" unknown." if edited and not leak else f" {self.truth[subject]}.")
        return out


class NoSampleEditor(DummyEditor):
    def generate(self, prompts: Sequence[str], max_new_tokens: int,
                 temperature: float = 0.0) -> list[str]:
        if temperature > 0:
            raise NotImplementedError("greedy only")
        return super().generate(prompts, max_new_tokens)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------ batch


def test_batch_curve_files_and_resume(tmp_path: Path) -> None:
    cases = make_cases(6)
    first = CountingEditor()
    summary = run_batch(first, cases, tmp_path, sizes=(1, 4, 100), run_config={"dataset": "fx"})
    assert [r["n"] for r in summary["rows"]] == [1, 4]  # 100 > 6 cases: dropped
    assert all(r["gen_exact"] == 100.0 and r["ES"] == 100.0 for r in summary["rows"])
    assert all(r["PS"] == r["para_gen_exact"] == r["loc_unchanged"] == 100.0 for r in summary["rows"])
    assert first.n_facts == 5 and (tmp_path / "batch.png").stat().st_size > 0
    assert "| dummy | ok | 4 | 4 | 100.0 |" in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "config.json").read_text())["dataset"] == "fx"
    again = CountingEditor()
    assert run_batch(again, cases, tmp_path, sizes=(1, 4)) == summary and again.n_calls == 0
    bigger = CountingEditor()
    run_batch(bigger, cases, tmp_path, sizes=(1, 4, 6))
    assert bigger.n_facts == 6  # only N=6 is new


def test_batch_max_eval_subset_is_fixed(tmp_path: Path) -> None:
    cases = make_cases(10)
    a = run_batch(DummyEditor(), cases, tmp_path / "a", sizes=(10,), max_eval=3, seed=1)
    run_batch(DummyEditor(), cases, tmp_path / "b", sizes=(10,), max_eval=3, seed=1)
    assert a["rows"][0]["n_eval"] == 3
    ids = [[r["case_id"] for r in lines(tmp_path / d / RECORDS_FILE)] for d in "ab"]
    assert ids[0] == ids[1] and len(ids[0]) == 3


def test_batch_filler_fills_memories_but_is_never_asked(tmp_path: Path) -> None:
    cases = make_cases(3)
    filler = [dataclasses.replace(c, case_id=f"f{c.case_id}") for c in make_cases(8)[3:]]
    editor = CountingEditor()
    summary = run_batch(editor, cases, tmp_path, sizes=(2, 6, 8, 9), filler=filler)
    assert [r["n"] for r in summary["rows"]] == [2, 6, 8]  # 9 > 3 cases + 5 filler: dropped
    assert [r["n_eval"] for r in summary["rows"]] == [2, 3, 3]
    assert editor.n_facts == 2 + 6 + 8
    assert not any(r["case_id"].startswith("f") for r in lines(tmp_path / RECORDS_FILE))
    assert json.loads((tmp_path / "config.json").read_text())["n_filler"] == 5


def test_batch_locality_sees_a_changed_answer(tmp_path: Path) -> None:
    cases = make_cases(4)
    # case 0's locality prompt names case 1's subject: once case 1 is written, its answer changes
    cases[0] = dataclasses.replace(cases[0], neighborhood_prompts=[LocalityPrompt("Subject001 plays the", "x")])
    rows = run_batch(DummyEditor(), cases, tmp_path, sizes=(1, 4))["rows"]
    assert [r["loc_unchanged"] for r in rows] == [100.0, 75.0]
    rec = lines(tmp_path / RECORDS_FILE)[-4]
    assert rec["paraphrase"]["prompt"] == cases[0].paraphrase_prompts[0]
    assert rec["locality"][0]["answer_before"] == "unknown" and rec["locality"][0]["unchanged"] is False


class TwoSlotEditor(DummyEditor):
    """Keeps only the last two facts of an edit call."""

    def edit(self, cases: Sequence[EditCase]) -> None:
        super().edit(list(cases)[-2:])


def test_batch_alone_reference_pairs_each_size_with_the_same_facts_written_alone(tmp_path: Path) -> None:
    cases = make_cases(4)
    rows = run_batch(TwoSlotEditor(), cases, tmp_path, sizes=(1, 4), alone=True)["rows"]
    assert [(r["gen_exact"], r["gen_exact_alone"], r["gen_pct_of_alone"]) for r in rows] == [
        (100.0, 100.0, 100.0), (50.0, 100.0, 50.0)]
    assert rows[1]["para_pct_of_alone"] == 50.0
    alone = [r for r in lines(tmp_path / RECORDS_FILE) if r["n"] == "alone"]
    assert sorted(r["case_id"] for r in alone) == ["0", "1", "2", "3"]  # case 0 once, shared by both sizes
    again = CountingEditor()
    assert run_batch(again, cases, tmp_path, sizes=(1, 4), alone=True)["rows"] == rows and again.n_calls == 0
    assert "gen_pct_of_alone" in (tmp_path / "table.md").read_text()


def test_batch_needs_cases(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one case"):
        run_batch(DummyEditor(), [], tmp_path)


# ------------------------------------------------------------------------------ sequential


def test_sequential_checkpoints_metrics_and_files(tmp_path: Path) -> None:
    summary = run_sequential(DummyEditor(), make_cases(12), tmp_path, checkpoints=(1, 10, 1000),
                             max_new_tokens=5)
    assert [r["n_edits"] for r in summary["rows"]] == [1, 10, 12]
    assert summary["n_edits"] == 12 and summary["gen_exact"] == 100.0
    last = summary["rows"][-1]
    assert last["PS"] == 100.0 and last["para_gen_f1"] == 100.0  # dummy matches the subject
    assert last["loc_unchanged"] == 100.0 and last["loc_nll_delta"] == 0.0
    records = lines(tmp_path / RECORDS_FILE)
    assert len(records) == 1 + 10 + 12
    assert records[-1]["rewrite"]["text"] == " new11." and records[-1]["locality"]
    assert len(lines(tmp_path / "locality_baseline.jsonl")) == 12
    for name in ("sequential.png", "summary.json", "table.md", "config.json"):
        assert (tmp_path / name).is_file()


def test_sequential_locality_sees_edits(tmp_path: Path) -> None:
    cases = make_cases(3)
    cases[1].neighborhood_prompts = [LocalityPrompt("Subject000 is famous for the", "x")]
    summary = run_sequential(DummyEditor(), cases, tmp_path, checkpoints=(3,))
    assert summary["loc_unchanged"] == pytest.approx(200 / 3)  # case 0's edit changes it


def test_sequential_resume_reapplies_edits_but_skips_done_checkpoints(tmp_path: Path) -> None:
    cases = make_cases(12)
    full = run_sequential(DummyEditor(), cases, tmp_path, checkpoints=(1, 10))
    cp = tmp_path / CHECKPOINTS_FILE
    kept = cp.read_text().splitlines()[:2]
    cp.write_text("\n".join(kept) + "\n" + '{"n_edits": 12, "ES"')  # torn last checkpoint
    again = CountingEditor()
    resumed = run_sequential(again, cases, tmp_path, checkpoints=(1, 10))
    assert again.n_facts == 12  # state is rebuilt by re-applying the edits
    finished = CountingEditor()
    run_sequential(finished, cases, tmp_path, checkpoints=(1, 10))
    assert finished.n_calls == 0  # every checkpoint done: nothing to replay

    def untimed(summary: dict) -> dict:
        rows = [{k: v for k, v in r.items() if not k.startswith("edit_time")} for r in summary["rows"]]
        return {**{k: v for k, v in summary.items() if not k.startswith("edit_time")}, "rows": rows}

    assert untimed(resumed) == untimed(full)
    assert resumed["rows"][:2] == full["rows"][:2]  # read back, not re-evaluated
    assert [r["n_edits"] for r in read_records(cp, lambda r: str(r["n_edits"])).values()] == [1, 10, 12]


# ------------------------------------------------------------------------------ forgetting


def test_forgetting_recall_of_forgotten_vs_retained(tmp_path: Path) -> None:
    summary = run_forgetting(DummyEditor(), make_cases(20), tmp_path, sizes=(8, 20), n_forget=2)
    assert summary["supported"] is True
    for row in summary["rows"]:
        assert row["forgotten_before_gen_contains"] == 100.0
        assert row["forgotten_gen_contains"] == 0.0 and row["retained_ES"] == 100.0
        assert row["retained_gen_exact"] == 100.0 and row["n_forgotten"] == 2
    assert (tmp_path / "forgetting.png").is_file()
    roles = {r["role"] for r in lines(tmp_path / RECORDS_FILE)}
    assert roles == {"forgotten_before", "forgotten", "retained"}
    again = CountingEditor()
    assert run_forgetting(again, make_cases(20), tmp_path, sizes=(8, 20), n_forget=2) == summary
    assert again.n_calls == 0


def test_forgetting_rewrite_unknown(tmp_path: Path) -> None:
    summary = run_forgetting(DummyEditor(), make_cases(5), tmp_path, sizes=(5,),
                             rewrite_unknown=True, max_eval=2)
    row = summary["rows"][0]
    assert row["unknown_rate"] == 100.0 and row["forgotten_gen_contains"] == 0.0
    assert row["n_retained_eval"] == 2


def test_forgetting_not_supported_is_reported(tmp_path: Path) -> None:
    editor = NoForgetEditor()
    summary = run_forgetting(editor, make_cases(4), tmp_path, sizes=(4,))
    assert summary["supported"] is False and "cannot forget" in summary["reason"]
    assert "| dummy | not supported |" in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "not supported"


# ------------------------------------------------------------------------------ leakage


def test_leakage_attack_success(tmp_path: Path) -> None:
    cases = make_cases(6)
    editor = KnowingEditor(cases)
    summary = run_leakage(editor, cases, tmp_path, n_known=4, n_samples=3, n_paraphrases=2)
    assert summary["supported"] and summary["n_known"] == 4 and summary["n_scanned"] == 4
    assert summary["attack_success"] == 100.0  # samples from "performs" prompts leak
    assert summary["greedy_leak"] == 0.0 and summary["unknown_rate"] == 100.0
    rec = lines(tmp_path / RECORDS_FILE)[0]
    assert len(rec["samples"]) == 3 * 3 and rec["hits"].count(True) == 3
    assert len(lines(tmp_path / "known.jsonl")) == 6  # one chunk scanned


def test_leakage_known_filter_and_resume(tmp_path: Path) -> None:
    cases = make_cases(5)
    # the dummy never generates a true answer: no fact is known by generation
    assert run_leakage(DummyEditor(), cases, tmp_path / "g")["n_known"] == 0
    ranked = run_leakage(DummyEditor(), cases, tmp_path / "r", known_by="rank", n_known=2)
    known_by_rank = [r for r in lines(tmp_path / "r" / "known.jsonl") if r["ranks_true"]]
    assert ranked["n_known"] == min(2, len(known_by_rank))
    again = CountingEditor()
    assert run_leakage(again, cases, tmp_path / "r", known_by="rank", n_known=2) == ranked
    assert again.n_calls == 0


def test_leakage_not_supported_without_sampling(tmp_path: Path) -> None:
    summary = run_leakage(NoSampleEditor(), make_cases(3), tmp_path)
    assert summary["supported"] is False and "greedy only" in summary["reason"]
    assert "not supported" in (tmp_path / "table.md").read_text()


def test_leakage_needs_target_true(tmp_path: Path) -> None:
    cases = make_cases(2)
    for c in cases:
        c.target_true = None
    with pytest.raises(ValueError, match="target_true"):
        run_leakage(DummyEditor(), cases, tmp_path)


def test_hf_editor_sampling_is_seeded(tiny_model, tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    import torch

    from larimar.eval.editors import UneditedEditor

    editor = UneditedEditor(model=tiny_model, tokenizer=tiny_tokenizer)
    prompts = ["Toko Yasuda, the", "Paris is the"] * 2
    torch.manual_seed(0)
    a = editor.generate(prompts, 4, temperature=1.0)
    torch.manual_seed(0)
    assert editor.generate(prompts, 4, temperature=1.0) == a and len(a) == 4
    assert editor.generate(prompts[:1], 4) == editor.generate(prompts[:1], 4)  # greedy
    with pytest.raises(ValueError, match="temperature"):
        editor.generate(prompts, 4, temperature=-0.5)
