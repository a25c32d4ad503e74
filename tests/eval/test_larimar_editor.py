"""The ``larimar`` editor on a tiny random Larimar model: edit / forget / reset / score /
generate through the editing API, sampling, and the protocols end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import larimar
from larimar.eval.datasets import EditCase, LocalityPrompt
from larimar.eval.editors import get_editor
from larimar.eval.larimar_editor import LarimarEditor
from larimar.eval.protocols import run_forgetting, run_leakage, run_sequential
from tests.editing.tiny_larimar import save_tiny_larimar

PROMPTS = [("Toko Yasuda plays the", "piano", "guitar"), ("Paris is the capital of", "germany", "france"),
           ("The cat sat on the", "field", "mat")]


def cases() -> list[EditCase]:
    return [
        EditCase(case_id=str(i), subject=p.split()[0], prompt=p, target_new=new, target_true=true,
                 paraphrase_prompts=[f"{p}."], neighborhood_prompts=[LocalityPrompt("A dog ran across the", "green")])
        for i, (p, new, true) in enumerate(PROMPTS)
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_larimar(tmp_path_factory.mktemp("tiny-larimar-eval"))


@pytest.fixture(scope="module")
def lm(model_dir: Path) -> larimar.Larimar:
    return larimar.load(model_dir)


@pytest.fixture()
def editor(lm: larimar.Larimar) -> LarimarEditor:
    lm.scope_threshold = 0.9
    return LarimarEditor(lm=lm, scope_threshold=0.0)  # every query in scope once facts exist


def test_registered_and_loads_from_path(model_dir: Path) -> None:
    ed = get_editor("larimar", model_path=model_dir, scope_threshold=0.5, write_paraphrases=True)
    assert isinstance(ed, LarimarEditor)
    assert ed.config() == {"name": "larimar", "model": str(model_dir), "scope_threshold": 0.5,
                           "write_paraphrases": True, "readout_scale": 3.0}


def test_builtin_missing_asks_for_a_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("larimar.editing.larimar.BUILTIN_DIR", tmp_path)  # an install without the weights
    with pytest.raises(FileNotFoundError, match="pass the folder of a saved model"):
        get_editor("larimar")


def test_edit_forget_reset(editor: LarimarEditor) -> None:
    cs = cases()
    editor.edit(cs)
    assert len(editor.memory) == 3
    assert [f.text for f in editor.memory.facts()] == [c.fact for c in cs]
    editor.edit([cs[0]])  # the same case again replaces its fact
    assert len(editor.memory) == 3 and editor.memory.facts()[-1].text == cs[0].fact
    editor.forget(["1", "missing"])
    assert len(editor.memory) == 2 and "1" not in editor.fact_ids
    editor.reset()
    assert len(editor.memory) == 0 and not editor.fact_ids


def test_write_paraphrases(lm: larimar.Larimar) -> None:
    ed = LarimarEditor(lm=lm, write_paraphrases=True)
    ed.edit(cases()[:2])
    assert len(ed.memory) == 2 and len(ed.memory.items.owners) == 4
    assert ed.memory.facts()[0].paraphrases == ("Toko Yasuda plays the. piano",)


def test_score_and_generate_go_through_the_api(editor: LarimarEditor, lm: larimar.Larimar) -> None:
    cs = cases()
    editor.edit(cs)
    prompts = [cs[0].prompt, cs[1].prompt, cs[0].prompt]
    conts = ["piano", "france", "guitar"]
    got = editor.score(prompts, conts)
    want = lm.score(cs[0].prompt, ["piano", "guitar"], editor.memory)
    assert got[0] == pytest.approx(want[0]) and got[2] == pytest.approx(want[1])
    assert got[1] == pytest.approx(lm.score(cs[1].prompt, ["france"], editor.memory)[0])
    assert editor.generate([cs[0].prompt], 4) == [lm.generate(cs[0].prompt, editor.memory, 4)]
    with pytest.raises(ValueError, match="continuations"):
        editor.score(prompts, conts[:1])


def test_memory_changes_scores_only_in_scope(lm: larimar.Larimar) -> None:
    ed = LarimarEditor(lm=lm, scope_threshold=0.999)
    base = ed.score(["A dog ran across the"], ["green"])
    ed.edit(cases())
    assert ed.score(["A dog ran across the"], ["green"]) == pytest.approx(base)  # out of scope


def test_sampling_is_seeded(editor: LarimarEditor) -> None:
    editor.edit(cases())
    torch.manual_seed(3)
    a = editor.generate(["Toko Yasuda plays the"] * 3 + ["A dog ran"], 5, temperature=1.0)
    torch.manual_seed(3)
    b = editor.generate(["Toko Yasuda plays the"] * 3 + ["A dog ran"], 5, temperature=1.0)
    assert a == b and len(a) == 4 and all(isinstance(t, str) for t in a)
    with pytest.raises(ValueError, match="temperature"):
        editor.generate(["x"], 2, temperature=-1.0)


def test_protocols_end_to_end(editor: LarimarEditor, tmp_path: Path) -> None:
    cs = cases()
    seq = run_sequential(editor, cs, tmp_path / "seq", checkpoints=(1,), max_new_tokens=3)
    assert [r["n_edits"] for r in seq["rows"]] == [1, 3]
    forget = run_forgetting(editor, cs, tmp_path / "forget", sizes=(3,), max_new_tokens=3)
    assert forget["supported"] and forget["rows"][0]["n_forgotten"] == 1
    leak = run_leakage(editor, cs, tmp_path / "leak", known_by="either", n_samples=2,
                       max_new_tokens=3)
    assert leak["supported"] and (tmp_path / "leak" / "table.md").is_file()
