"""`larimar eval` on tiny fixtures: every protocol through the CLI, editor building, errors.

``test_cli_single_and_sequential_smoke`` is the CI smoke run of the whole harness.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from larimar.cli import main
from larimar.eval.baselines.icl import InContextEditor, ScopeEmbedder, encoder_embedder
from larimar.eval.runner import EvalConfig, build_editor, run_eval
from larimar.model.assets import AssetNotFoundError
from tests.tiny import save_base_models


def zsre_records(n: int) -> list[dict]:
    return [
        {"subject": f"Entity{i:02d}", "src": f"What is the product made by Entity{i:02d}?",
         "rephrase": f"What does Entity{i:02d} make?", "alt": f"thing{i}", "answers": [f"item{i}"],
         "loc": f"nq question: who wrote book {i}", "loc_ans": f"author{i}", "pred": "",
         "cond": ""}
        for i in range(n)
    ]


@pytest.fixture()
def zsre_file(tmp_path: Path) -> Path:
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(zsre_records(14)))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_single_and_sequential_smoke(zsre_file: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "single"
    code, stdout, err = run(capsys, "eval", "single", "--editor", "dummy", "--data", str(zsre_file),
                            "--limit", "5", "--out", str(out), "--seed", "3")
    assert code == 0, err
    assert stdout.startswith("| editor | n_cases | ES |") and "| dummy | 5 | 100.0 |" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["seed"] == 3 and config["run"]["limit"] == 5
    assert config["run"]["zsre_target"] == "alt"
    out = tmp_path / "sequential"
    code, stdout, err = run(capsys, "eval", "sequential", "--editor", "dummy", "--data", str(zsre_file),
                            "--out", str(out), "--checkpoints", "1,10")
    assert code == 0, err
    assert "| dummy | ok | 14 |" in stdout and (out / "sequential.png").is_file()
    assert "sequential" in err  # the progress bar


@pytest.mark.parametrize("protocol,extra", [
    ("batch", ["--sizes", "1,4,8", "--max-eval", "3"]),
    ("forgetting", ["--sizes", "8", "--n-forget", "2", "--rewrite-unknown"]),
    ("leakage", ["--known-by", "rank", "--n-known", "3", "--n-samples", "2"]),
])
def test_cli_protocols(protocol: str, extra: list[str], zsre_file: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / protocol
    code, stdout, err = run(capsys, "eval", protocol, "--editor", "dummy", "--data", str(zsre_file),
                            "--out", str(out), *extra)
    assert code == 0, err
    assert "| dummy | ok |" in stdout
    assert json.loads((out / "summary.json").read_text())["protocol"] == protocol
    assert (out / "table.md").read_text() == stdout


def test_cli_answers0_target_breaks_single_clearly(zsre_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "eval", "single", "--editor", "dummy", "--data", str(zsre_file),
                       "--zsre-target", "answers0", "--out", str(tmp_path))
    assert code == 2 and "target_true" in err


def test_cli_user_errors(zsre_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "eval", "single", "--editor", "nope", "--data", str(zsre_file))
    assert code == 2 and "unknown editor 'nope'" in err
    code, _, err = run(capsys, "eval", "single", "--editor", "dummy", "--data", str(tmp_path / "x.json"))
    assert code == 2 and "not found" in err
    code, _, err = run(capsys, "eval", "single", "--editor", "dummy", "--data", str(zsre_file),
                       "--model", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and "does not take options" in err
    with pytest.raises(SystemExit):
        main(["eval", "batch", "--editor", "dummy", "--data", str(zsre_file), "--sizes", "a,b"])


def test_run_eval_default_out_and_config(zsre_file: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = EvalConfig("batch", "dummy", zsre_file, sizes=(2,))
    assert cfg.out_dir == Path("runs/eval/batch-dummy")
    summary = run_eval(cfg)
    assert summary["rows"][0]["n"] == 2 and (tmp_path / "runs/eval/batch-dummy/batch.png").exists() is False
    with pytest.raises(ValueError, match="unknown protocol"):
        EvalConfig("nope", "dummy", zsre_file)  # type: ignore[arg-type]


def test_run_eval_batch_filler(zsre_file: Path, tmp_path: Path) -> None:
    cfg = EvalConfig("batch", "dummy", zsre_file, limit=2, sizes=(1, 5), filler=str(zsre_file), out=tmp_path / "b")
    summary = run_eval(cfg)
    assert [(r["n"], r["n_eval"]) for r in summary["rows"]] == [(1, 1), (5, 2)]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["n_filler"] == 5
    with pytest.raises(ValueError, match="belong to the batch protocol"):
        EvalConfig("single", "dummy", zsre_file, filler=zsre_file)


def test_icl_builder_with_scope_threshold(tmp_path: Path) -> None:
    _, decoder_dir = save_base_models(tmp_path)
    cfg = EvalConfig("single", "icl", tmp_path / "d.json", model=decoder_dir, scope_threshold=0.7)

    def embed(texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.ones(len(texts), 4), dim=-1)

    editor = InContextEditor.from_options(cfg.editor_options(), embed=embed)
    assert isinstance(editor, InContextEditor) and editor.scope_threshold == 0.7
    plain = build_editor(EvalConfig("single", "icl", tmp_path / "d.json", model=decoder_dir))
    assert isinstance(plain, InContextEditor) and plain.scope_threshold is None
    assert isinstance(plain.embed, ScopeEmbedder) and plain.embed._encoder is None  # loaded on first use
    assert plain.max_facts == 32
    unbounded = InContextEditor.from_options(
        EvalConfig("single", "icl", tmp_path / "d.json", model=decoder_dir, max_facts=None).editor_options(), embed=embed)
    assert unbounded.max_facts is None
    with pytest.raises(ValueError, match="--max-facts must be positive"):
        EvalConfig("single", "icl", tmp_path / "d.json", max_facts=0)


def test_encoder_embedder_is_unit_norm() -> None:
    embed = encoder_embedder()
    try:
        embed.encoder  # the default encoder loads on first use
    except AssetNotFoundError as err:
        pytest.skip(str(err))
    vectors = embed(["Paris is in France.", "The cat sat."])
    assert vectors.shape[0] == 2
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_device_option_is_checked(zsre_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from larimar.eval.config import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="--device must be"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            EvalConfig("single", "dummy", zsre_file, device="cuda")
        code, _, err = run(capsys, "eval", "single", "--editor", "dummy", "--data", str(zsre_file),
                           "--device", "cuda:0")
        assert code == 2 and "use --device cpu" in err


def test_decoder_editors_load_on_the_chosen_device(tmp_path: Path) -> None:
    _, decoder_dir = save_base_models(tmp_path)
    cfg = EvalConfig("single", "none", tmp_path / "d.json", model=decoder_dir, device="cpu")
    editor = build_editor(cfg)
    assert next(editor.model.parameters()).device.type == "cpu"
    assert cfg.to_json()["device"] == "cpu"


def test_offset_shards_merge_into_one_resumed_run(zsre_file: Path, tmp_path: Path) -> None:
    from larimar.eval.runner import load_eval_cases

    whole = load_eval_cases(EvalConfig("single", "dummy", zsre_file, limit=10))
    part = load_eval_cases(EvalConfig("single", "dummy", zsre_file, offset=4, limit=3))
    assert [c.case_id for c in part] == [c.case_id for c in whole[4:7]]
    with pytest.raises(ValueError, match="--offset must be"):
        EvalConfig("single", "dummy", zsre_file, offset=-1)
    with pytest.raises(ValueError, match="offset 20"):
        run_eval(EvalConfig("single", "dummy", zsre_file, offset=20, out=tmp_path / "none"))
    shards = [tmp_path / "a", tmp_path / "b"]
    run_eval(EvalConfig("single", "dummy", zsre_file, limit=5, out=shards[0]))
    run_eval(EvalConfig("single", "dummy", zsre_file, offset=5, limit=5, out=shards[1]))
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "cases.jsonl").write_text("".join((s / "cases.jsonl").read_text() for s in shards))

    class Refuses(InContextEditor):
        def edit(self, cases):  # every case is already done: the merged run must not edit
            raise AssertionError("resumed run edited again")

    summary = run_eval(EvalConfig("single", "dummy", zsre_file, limit=10, out=merged),
                       editor=Refuses(model=torch.nn.Linear(1, 1), tokenizer=object()))
    assert summary["n_cases"] == 10


def test_icl_scope_uses_keys_and_views_when_the_embedder_has_them(tmp_path: Path) -> None:
    from larimar.eval.datasets import EditCase

    _, decoder_dir = save_base_models(tmp_path)

    class TwoKeys:
        def __call__(self, texts):  # plain embeddings would never match
            return torch.tensor([[1.0, 0.0]] * len(texts))

        def keys(self, facts):  # (F, 2, H): the second (head) key matches
            return torch.tensor([[[0.0, 1.0], [1.0, 0.0]]] * len(facts))

        def views(self, prompt):  # (V, H)
            return torch.tensor([[0.0, -1.0], [1.0, 0.0]]) if "." in prompt else torch.tensor([[0.0, -1.0]])

    cfg = EvalConfig("single", "icl", tmp_path / "d.json", model=decoder_dir, scope_threshold=0.9)
    editor = InContextEditor.from_options(cfg.editor_options(), embed=TwoKeys())
    editor.edit([EditCase("1", "Paris", "Paris is in", "Italy", "France")])
    assert editor.in_scope(["Noise. Paris is in", "Paris is in"]) == [True, False]


def test_encoder_embedder_gives_scope_keys_and_views() -> None:
    embed = encoder_embedder()
    try:
        embed.encoder  # the default encoder loads on first use
    except AssetNotFoundError as err:
        pytest.skip(str(err))
    keys = embed.keys(["The Eiffel Tower is located in Rome."])
    assert keys.shape == (1, 2, 384)
    assert embed.views("A note. The Eiffel Tower is located in").shape == (2, 384)
    assert embed.views("The Eiffel Tower is located in").shape == (1, 384)


def test_eval_options_are_generated_from_the_config(zsre_file: Path) -> None:
    from larimar.cli import build_parser
    from larimar.cliargs import from_options
    from larimar.eval.config import PROTOCOL_NAMES
    from larimar.eval.runner import PROTOCOLS

    assert tuple(PROTOCOLS) == PROTOCOL_NAMES
    argv = ["eval", "forgetting", "--editor", "icl", "--data", str(zsre_file), "--limit", "7", "--offset", "2",
            "--out", "o", "--model", "m", "--scope-threshold", "0.5", "--max-facts", "0", "--write-paraphrases",
            "--strip-distractor", "--zsre-target", "answers0", "--seed", "3", "--max-new-tokens", "4",
            "--sizes", "1,2", "--checkpoints", "1,5", "--max-eval", "9", "--n-forget", "2", "--rewrite-unknown",
            "--n-known", "6", "--known-by", "rank", "--n-paraphrases", "2", "--n-samples", "3",
            "--temperature", "0.5", "--stats-corpus", "s.jsonl", "--device", "cpu", "--verbose"]
    cfg = from_options(EvalConfig, build_parser().parse_args(argv))
    assert cfg == EvalConfig(
        "forgetting", "icl", zsre_file, limit=7, offset=2, out=Path("o"), model=Path("m"), scope_threshold=0.5,
        max_facts=None, write_paraphrases=True, strip_distractor=True, zsre_target="answers0", seed=3,
        max_new_tokens=4, sizes=(1, 2), checkpoints=(1, 5), max_eval=9, n_forget=2, rewrite_unknown=True,
        n_known=6, known_by="rank", n_paraphrases=2, n_samples=3, temperature=0.5,
        stats_corpus=Path("s.jsonl"), device="cpu")
    defaults = from_options(EvalConfig, build_parser().parse_args(["eval", "single", "--editor", "none",
                                                                   "--data", str(zsre_file)]))
    assert defaults == EvalConfig("single", "none", zsre_file, stats_corpus=Path("runs/corpus/train.jsonl"))


def test_icl_scope_uses_the_trained_detector_when_the_embedder_offers_it(tmp_path: Path) -> None:
    from larimar.editing.scope import ScopeDetector
    from larimar.eval.datasets import EditCase
    from tests.editing.tiny_shipped import TINY_SCOPE

    _, decoder_dir = save_base_models(tmp_path)

    class WithDetector:  # every cosine is 1: only the detector's word features tell the queries apart
        def __call__(self, texts):
            return torch.tensor([[1.0, 0.0]] * len(texts))

        def keys(self, facts):
            return torch.tensor([[[1.0, 0.0], [1.0, 0.0]]] * len(facts))

        def views(self, prompt):
            return torch.tensor([[1.0, 0.0]])

        def detector(self, tokenizer):
            return ScopeDetector(TINY_SCOPE, tokenizer)

    cfg = EvalConfig("single", "icl", tmp_path / "d.json", model=decoder_dir, scope_threshold=0.5)
    editor = InContextEditor.from_options(cfg.editor_options(), embed=WithDetector())
    editor.edit([EditCase("1", "Paris", "Paris is in", "Italy", "France")])
    assert editor.in_scope(["Paris is in", "Where does Olga Moreau live?"]) == [True, False]
