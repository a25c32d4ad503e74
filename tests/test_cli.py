"""The `larimar` command line on a tiny saved model: write / ask / forget / facts, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from larimar.cli import COMMANDS, build_parser, main
from tests.editing.tiny_larimar import save_tiny_larimar


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_larimar(tmp_path_factory.mktemp("cli-model")))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip(model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mem = str(tmp_path / "facts.safetensors")
    code, out, _ = run(capsys, "write", "Paris is the capital of France.", "The cat sat on the mat.", "--memory", mem, "--model", model)
    assert code == 0
    ids = [line.split("\t")[0] for line in out.splitlines()]
    assert len(ids) == 2 and out.splitlines()[0].endswith("\tParis is the capital of France.")
    code, out, _ = run(capsys, "write", "Berlin is the capital of Germany.", "--memory", mem, "--model", model)
    assert code == 0
    code, out, _ = run(capsys, "facts", "--memory", mem)
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()][:2] == ids and len(out.splitlines()) == 3
    code, out, err = run(capsys, "ask", "Paris is the capital of France.", "--memory", mem, "--model", model,
                         "--max-new-tokens", "3", "--threshold", "0.999")
    assert code == 0 and "in scope" in err and ids[0] in err
    code, out, _ = run(capsys, "forget", ids[0], "--memory", mem, "--model", model)
    assert code == 0 and out.strip() == f"forgot {ids[0]}"
    code, out, _ = run(capsys, "facts", "--memory", mem, "--model", model)
    assert ids[0] not in out and len(out.splitlines()) == 2


def test_ask_without_memory(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ask", "Paris is", "--model", model, "--max-new-tokens", "2")
    assert code == 0 and "out of scope" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["forget", "nope", "--memory", "{mem}"], "no fact with id 'nope'"),
        (["ask", "Paris", "--memory", "{tmp}/missing.safetensors"], "no memory state file"),
        (["facts", "--memory", "{tmp}/missing.safetensors"], "no memory state file"),
        (["write", "", "--memory", "{tmp}/new.safetensors"], "is empty"),
        (["facts", "--memory", "{tmp}/junk.safetensors"], "not a readable memory state file"),
    ],
)
def test_errors_exit_2_with_one_line(model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    mem = tmp_path / "facts.safetensors"
    assert main(["write", "Paris is the capital of France.", "--memory", str(mem), "--model", model]) == 0
    (tmp_path / "junk.safetensors").write_text("junk")
    capsys.readouterr()
    argv = [a.format(mem=mem, tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, *argv, *(["--model", model]))
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "new.safetensors").exists()


def test_bad_model_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ask", "Paris", "--model", str(tmp_path / "nowhere"))
    assert code == 2 and "no Larimar model" in err


def test_missing_builtin_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("larimar.editing.larimar.BUILTIN_DIR", tmp_path)  # an install without the weights
    code, _, err = run(capsys, "ask", "Paris")
    assert code == 2 and "built-in Larimar model is not available yet" in err


def test_parser_lists_every_command() -> None:
    assert {"demo", "write", "ask", "forget", "facts"} <= set(COMMANDS)
    assert build_parser().parse_args(["demo", "--model", "x"]).model == Path("x")


def test_demo_runs_on_a_tiny_model(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "--model", model, "--max-new-tokens", "2")
    assert code == 0
    for heading in ("Before editing", "Writing facts", "Paraphrases", "Unrelated", "After forgetting"):
        assert heading in out


def test_ask_eval_on_a_tiny_question_set(model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    data = {"facts": [{"fact": f"Item {i} is kept in room {i}.", "answer": f"room {i}",
                       "question": f"Where is item {i} kept?", "rephrased": f"Which room holds item {i}?"}
                      for i in range(4)],
            "unrelated": ["What is the capital of Japan?", "How do I boil an egg?"]}
    path, out = tmp_path / "questions.json", tmp_path / "report.json"
    path.write_text(json.dumps(data))
    code, printed, _ = run(capsys, "ask-eval", "questions", "--data", str(path), "--model", model, "--sizes", "2",
                           "--forget", "1", "--max-new-tokens", "3", "--out", str(out))
    assert code == 0 and "| single fact | 4 |" in printed and "facts in one memory" in printed
    report = json.loads(out.read_text())
    assert report["single"]["facts"] == 4 and report["many_2"]["facts"] == 2 and report["forget"]["forgotten"] == 1
    assert 0.0 <= report["unrelated"]["unchanged"] <= 1.0
    (tmp_path / "bad.json").write_text(json.dumps({"facts": [{"fact": "x"}], "unrelated": []}))
    code, _, err = run(capsys, "ask-eval", "questions", "--data", str(tmp_path / "bad.json"), "--model", model)
    assert code == 2 and "lacks" in err


def test_ask_eval_sequential_edits_share_one_memory(model: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import json

    records = [{"subject": f"Lake {i}", "src": f"Which country is Lake {i} in?", "rephrase": f"Lake {i} lies in?",
                "answers": ["Chad"], "alt": f"Land {i}", "loc": "nq question: who wrote hamlet",
                "loc_ans": "Shakespeare"} for i in range(3)]
    path, out = tmp_path / "zsre.json", tmp_path / "report.json"
    path.write_text(json.dumps(records))
    code, printed, _ = run(capsys, "ask-eval", "edits", "--data", str(path), "--model", model, "--sequential",
                           "--max-new-tokens", "3", "--out", str(out))
    assert code == 0 and "| 3 |" in printed
    report = json.loads(out.read_text())
    assert report["sequential"] is True and report["cases"] == 3
    assert all(0.0 <= report[k] <= 1.0 for k in ("rewrite", "paraphrase", "locality_unchanged", "locality_in_scope"))
    code, _, _ = run(capsys, "ask-eval", "edits", "--data", str(path), "--model", model, "--offset", "1", "--limit", "1",
                     "--max-new-tokens", "3", "--out", str(out))
    report = json.loads(out.read_text())
    assert code == 0 and report["cases"] == 1 and report["offset"] == 1 and report["sequential"] is False
    assert report["examples"][0]["prompt"] == "Which country is Lake 1 in?"
