"""Loaders for each schema, auto-detection, distractor stripping and error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from larimar.eval.datasets import LocalityPrompt, detect_format, load_cases, strip_distractor

ROME = {
    "case_id": 2,
    "pararel_idx": 2796,
    "requested_rewrite": {
        "prompt": "{}, the", "relation_id": "P1303", "subject": "Toko Yasuda",
        "target_new": {"str": "piano", "id": "Q5994"}, "target_true": {"str": "guitar", "id": "Q6607"},
    },
    "paraphrase_prompts": [
        "Initially  and  are zero and  is false. Toko Yasuda, performing on the",
        "Category:Hitachi The instrument of Toko Yasuda is the",
    ],
    "neighborhood_prompts": ["Paul McCartney plays the instrument", "John Lennon, playing the"],
    "attribute_prompts": ["Robert Radecke performs on the"],
    "generation_prompts": ["Toko Yasuda is known for"],
}
EASYEDIT = {
    "case_id": 10, "prompt": "BBC One, by", "target_new": "Sega", "subject": "BBC One",
    "ground_truth": "BBC", "rephrase_prompt": "BBC One is owned by",
    "locality_prompt": "BBC Radio, by", "locality_ground_truth": "BBC",
}
MEND = {
    "subject": "UniFirst", "src": "What is the product made by UniFirst?", "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?", "alt": "unmanned aircraft",
    "answers": ["uniform"], "loc": "nq question: who plays walter", "loc_ans": "John Goodman",
    "cond": "uniform >> unmanned aircraft || What is the product made by UniFirst?",
}
KNOWEDIT = {
    "subject": "Watts Humphrey", "target_new": "University of Michigan",
    "prompt": "Which college is related with Watts Humphrey?",
    "ground_truth": ["Illinois Institute of Technology"],
    "rephrase_prompt": "What university did Watts Humphrey attend?",
    "locality": {"Relation_Specificity": [
        {"prompt": "The employer of Watts Humphrey is", "ground_truth": [["IBM", "I.B.M."]]}]},
    "portability": {"Subject_Aliasing": []},
}


def write(tmp_path: Path, records: Any, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize(
    ("record", "fmt"),
    [(ROME, "rome"), (EASYEDIT, "easyedit_cf"), (MEND, "mend_zsre"), (KNOWEDIT, "knowedit_zsre")],
)
def test_detect_format(record: dict, fmt: str) -> None:
    assert detect_format(record) == fmt


def test_rome_loader(tmp_path: Path) -> None:
    (case,) = load_cases(write(tmp_path, [ROME]))
    assert case.case_id == "2" and case.prompt == "Toko Yasuda, the"
    assert (case.target_new, case.target_true) == ("piano", "guitar")
    assert case.paraphrase_prompts == ROME["paraphrase_prompts"]  # ROME keeps the distractor
    assert case.neighborhood_prompts[0] == LocalityPrompt("Paul McCartney plays the instrument", "guitar")
    assert case.attribute_prompts == ROME["attribute_prompts"]
    assert case.generation_prompts == ROME["generation_prompts"]
    assert case.extra["relation_id"] == "P1303" and case.extra["pararel_idx"] == 2796
    assert case.fact == "Toko Yasuda, the piano"


def test_rome_loader_strips_distractor(tmp_path: Path) -> None:
    (case,) = load_cases(write(tmp_path, [ROME]), strip_distractor=True)
    assert case.paraphrase_prompts == [
        "Toko Yasuda, performing on the", "The instrument of Toko Yasuda is the"]


@pytest.mark.parametrize(
    ("prompt", "subject", "want"),
    [
        ("Hardin, James N. New York to Oberplan. BBC One is from", "BBC One", "BBC One is from"),
        ("Victoriano (1867–1931). Which position does Percy Snow play? They play as",
         "Percy Snow", "Which position does Percy Snow play? They play as"),
        ("Category:Khotinsky Uyezd Charles Pillsbury's life ended in", "Charles Pillsbury",
         "Charles Pillsbury's life ended in"),
        ("Rajszew The language of The Icelandic Dream was", "The Icelandic Dream",
         "The language of The Icelandic Dream was"),
        ("List of administrators\n\nReferences\n\n* Mahmoud Fawzi, who is", "Mahmoud Fawzi",
         "Mahmoud Fawzi, who is"),
        ("Some text. Another sentence. No subject here", "Absent", "No subject here"),
        ("Toko Yasuda plays the", "Toko Yasuda", "Toko Yasuda plays the"),
    ],
)
def test_strip_distractor(prompt: str, subject: str, want: str) -> None:
    assert strip_distractor(prompt, subject) == want


def test_multi_rewrite(tmp_path: Path) -> None:
    second = {**ROME["requested_rewrite"], "subject": "Yoko Ono", "target_new": {"str": "drums"}}
    record = {**ROME, "requested_rewrite": [ROME["requested_rewrite"], second]}
    path = write(tmp_path, [record])
    assert [c.case_id for c in load_cases(path)] == ["2"]
    split = load_cases(path, multi_rewrite="split")
    assert [(c.case_id, c.subject, c.target_new) for c in split] == [
        ("2/0", "Toko Yasuda", "piano"), ("2/1", "Yoko Ono", "drums")]


def test_easyedit_loader(tmp_path: Path) -> None:
    (case,) = load_cases(write(tmp_path, [EASYEDIT]), format="easyedit_cf")
    assert (case.case_id, case.prompt, case.target_new, case.target_true) == ("10", "BBC One, by", "Sega", "BBC")
    assert case.paraphrase_prompts == ["BBC One is owned by"]
    assert case.neighborhood_prompts == [LocalityPrompt("BBC Radio, by", "BBC")]


def test_mend_zsre_targets(tmp_path: Path) -> None:
    path = write(tmp_path, [MEND, MEND])
    alt = load_cases(path)
    assert [c.case_id for c in alt] == ["0", "1"]
    assert (alt[0].target_new, alt[0].target_true) == ("unmanned aircraft", "uniform")
    assert alt[0].neighborhood_prompts == [LocalityPrompt(MEND["loc"], "John Goodman")]
    ans = load_cases(path, zsre_target="answers0", limit=1)
    assert len(ans) == 1 and (ans[0].target_new, ans[0].target_true) == ("uniform", None)
    assert ans[0].extra["zsre_target"] == "answers0"


def test_knowedit_loader(tmp_path: Path) -> None:
    (case,) = load_cases(write(tmp_path, [KNOWEDIT]))
    assert case.target_new == "University of Michigan"
    assert case.target_true == "Illinois Institute of Technology"
    assert case.neighborhood_prompts == [LocalityPrompt("The employer of Watts Humphrey is", "IBM")]
    assert "portability" in case.extra


def test_limit_and_empty(tmp_path: Path) -> None:
    assert len(load_cases(write(tmp_path, [EASYEDIT] * 5), limit=3)) == 3
    assert load_cases(write(tmp_path, [], "empty.json")) == []


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        load_cases(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_cases(bad)
    with pytest.raises(ValueError, match=r"unknown dataset schema.*requested_rewrite"):
        load_cases(write(tmp_path, [{"question": "q"}], "odd.json"))
    with pytest.raises(ValueError, match="expected a JSON list of objects"):
        load_cases(write(tmp_path, [1, 2], "ints.json"))
    with pytest.raises(ValueError, match="record 0 lacks key 'prompt'"):
        load_cases(write(tmp_path, [MEND], "m.json"), format="easyedit_cf")
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        load_cases(write(tmp_path, [MEND], "m.json"), format="csv")  # type: ignore[arg-type]


def test_empty_targets_and_locality_answers_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty_alt = {**MEND, "alt": " "}
    empty_loc = {**MEND, "loc_ans": ""}
    path = write(tmp_path, [MEND, empty_alt, empty_loc])
    with caplog.at_level("WARNING", logger="larimar.eval.datasets"):
        cases = load_cases(path)
    assert [c.case_id for c in cases] == ["0", "2"]
    assert "skipped 1 case(s) with an empty edit target (ids 1)" in caplog.text
    assert cases[1].neighborhood_prompts == []  # nothing to keep without an answer
    assert [c.case_id for c in load_cases(path, zsre_target="answers0")] == ["0", "1", "2"]
