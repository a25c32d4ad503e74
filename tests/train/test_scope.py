"""The scope stage of `larimar train` (`larimar.train.scope`), on tiny models and fixtures."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from larimar.model import LarimarModel
from larimar.model.scope import FEATURES, ScopeConfig, words
from larimar.train.config import ExportConfig
from larimar.train.scope import (
    OTHER_QUESTIONS,
    NOTE_TEMPLATES,
    QUESTIONS,
    RECORD_TEMPLATES,
    SCOPE_FILE,
    TEMPLATES,
    ScopeTrainConfig,
    anchor_words,
    build_pairs,
    casual,
    fit_network,
    nearest_negatives,
    relation,
    templated_pairs,
    train_scope,
    with_casual,
)
from tests.editing.tiny_shipped import shipped_config

ROOT = Path(__file__).resolve().parents[2]
PLACES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Quito"]


def records(n: int = 24) -> list[dict[str, str]]:
    """Flat CounterFact-style records over three relations."""
    forms = ["{} is located in", "The mother tongue of {} is", "{}, the"]
    out = []
    for i in range(n):
        subject = f"Subject{i} Tower"
        prompt = forms[i % 3].format(subject)
        out.append({"case_id": i, "subject": subject, "prompt": prompt, "target_new": PLACES[i % 6],
                    "ground_truth": "x", "rephrase_prompt": f"Everyone knows that {prompt}",
                    "locality_prompt": forms[i % 3].format(f"Other{i} Bridge"), "locality_ground_truth": "y"})
    return out


def test_relations_give_question_forms() -> None:
    located = relation("{} is located in")
    assert located is not None and "Where is {} located?" in QUESTIONS[located][1]
    language = relation("The mother tongue of {} is")
    assert language is not None and "What language does {} speak?" in QUESTIONS[language][1]
    assert relation("{}, the") is None


def test_pairs_label_queries_about_the_fact() -> None:
    recs = records()
    pairs = build_pairs(recs, seed=0)
    fact = "Subject0 Tower is located in Paris."
    own = {(q, label) for q, f, label, case in pairs if case == 0}
    assert all(f == fact for _, f, _, case in pairs if case == 0)
    assert ("Subject0 Tower is located in", 1) in own and ("Other0 Bridge is located in", 0) in own
    assert ("Where is Subject0 Tower located?", 1) in own
    about_subject = [q for q, label in own if label == 0 and "Subject0 " in q]
    assert len(about_subject) == 1 and any(q == f.format("Subject0 Tower") for f in OTHER_QUESTIONS
                                           for q in about_subject)  # only a question for a date or number
    assert any(label == 0 and "Paris" in q and q.endswith("?") for q, label in own)  # about the answer
    assert not any(q.endswith("?") for q, _, _, case in pairs if case == 2 and _ == 1)  # "{}, the": no questions


def test_subjects_sharing_a_word_give_negative_pairs() -> None:
    recs = records(6)
    recs[3] |= {"subject": "Grand Hotel", "prompt": "Grand Hotel is located in"}
    recs[0] |= {"subject": "Grand Canyon", "prompt": "Grand Canyon is located in"}
    pairs = build_pairs(recs, seed=0)
    assert ("Where is Grand Hotel located?", "Grand Canyon is located in Paris.", 0, 0) in pairs or \
        ("Where can Grand Hotel be found?", "Grand Canyon is located in Paris.", 0, 0) in pairs


def test_pairs_do_not_depend_on_the_hash_seed() -> None:
    code = ("import json; from tests.train.test_scope import records; from larimar.train.scope import build_pairs\n"
            "recs = records(24)\n"
            "for i, r in enumerate(recs):\n"  # each subject shares one word with some, another with others
            "    name = ['Grand', 'Royal', 'Silver', 'North'][i % 4] + ' ' + ['Hotel', 'Canyon', 'Bridge'][i % 3]\n"
            "    r['prompt'] = r['prompt'].replace(r['subject'], name); r['subject'] = name + f' {i}'\n"
            "    r['prompt'] = r['prompt'].replace(name, r['subject'])\n"
            "print(json.dumps(build_pairs(recs, seed=0)))")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(outputs) == 1  # subjects' word sets are walked in sorted order


def test_casual_copies_keep_labels_and_lower_the_case() -> None:
    assert casual("Where is Grand Hotel located? ") == "where is grand hotel located"
    pairs = [("Where is X?", "X is in Rome.", 1, 0), ("Who owns Y?", "X is in Rome.", 0, 0)]
    assert with_casual(pairs, 0.0, random.Random(0)) == pairs
    both = with_casual(pairs, 1.0, random.Random(0))
    assert both[2:] == [("where is x", "X is in Rome.", 1, 0), ("who owns y", "X is in Rome.", 0, 0)]


def test_templated_pairs_ask_about_their_own_names() -> None:
    pairs = templated_pairs(random.Random(0), 50, first_case=100)
    assert {case for *_, case in pairs} <= set(range(100, 150))
    assert {label for *_, label, _ in pairs} == {0, 1}
    for query, fact, label, _ in pairs:
        if label:  # a question about the fact names its person, department or meeting
            shared = set(words(query.lower())) & set(words(fact.lower()))
            assert any(len(w) > 3 and w not in {"what", "which", "where"} for w in shared), (query, fact)


def test_record_templates_are_drawn_only_where_asked_for() -> None:
    plain = templated_pairs(random.Random(0), 60, 0, TEMPLATES)
    mixed = templated_pairs(random.Random(0), 60, 0)
    record_forms = [max(re.split(r"\{\w+\}", form), key=len) for form, _ in RECORD_TEMPLATES]  # "'s badge number is "
    assert not any(f in fact for _, fact, *_ in plain for f in record_forms)
    assert any(f in fact for _, fact, *_ in mixed for f in record_forms)
    assert templated_pairs(random.Random(0), 60, 0, TEMPLATES) == plain  # seeded
    noted = templated_pairs(random.Random(0), 60, 0, TEMPLATES + NOTE_TEMPLATES)
    note_forms = [max(re.split(r"\{\w+\}", form), key=len) for form, _ in NOTE_TEMPLATES]
    assert not any(f in fact for _, fact, *_ in plain + mixed for f in note_forms)
    notes = [(q, fact) for q, fact, label, _ in noted if label and any(f in fact for f in note_forms)]
    assert notes and all("{" not in q + fact for q, fact in notes)


def test_the_network_fits_a_separable_rule() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, len(FEATURES), generator=gen, dtype=torch.float64)
    y = (x[:, 0] - x[:, 6] > 0).double()
    config = ScopeConfig(**fit_network(x, y, hidden=4, l2=1e-4, seed=0))
    from larimar.model.scope import probability

    assert float(((probability(config, x) >= 0.5).double() == y).double().mean()) > 0.97


def test_train_scope_writes_a_detector_that_export_puts_in_the_config(tmp_path: Path) -> None:
    config = shipped_config(tmp_path / "base")
    model = LarimarModel.from_config(config)
    data = tmp_path / "cf.json"
    data.write_text(json.dumps(records(30)))
    report = train_scope(ScopeTrainConfig(data=str(data), cases=30, templated=20, hidden=4, hard_negatives=1),
                         model.encoder,
                         model.tokenizer, tmp_path / "run", seed=0)
    written = json.loads((tmp_path / "run" / SCOPE_FILE).read_text())
    assert written == json.loads(json.dumps(report))
    assert 0.0 <= written["validation"]["accuracy"]["all"] <= 1.0 and written["pairs"]["validate"] > 0
    exported = ExportConfig().model_config(config, written["scope"])
    assert isinstance(exported.scope, ScopeConfig) and len(exported.scope.b1) == 4


def test_nearest_negatives_skip_what_a_query_is_about(tmp_path: Path) -> None:
    model = LarimarModel.from_config(shipped_config(tmp_path / "base"))
    pairs = [("Where is Paris located?", "Paris is located in Rome.", 1, 0),
             ("Where is Oslo located?", "Oslo is located in Lima.", 1, 1),
             ("What does Oslo play?", "Oslo is located in Lima.", 0, 1),
             ("Who owns Cairo?", "Cairo is owned by Quito.", 1, 2),
             ("Where is Cairo located?", "Cairo is owned by Quito.", 1, 2)]
    anchors = anchor_words(pairs, {0: "Paris", 1: "Oslo"})
    assert anchors["Paris is located in Rome."] == {"paris"}
    assert anchors["Cairo is owned by Quito."] == {"cairo", "quito"}  # no subject: capitalised words
    mined = nearest_negatives(model.encoder, pairs, anchors, count=1)
    assert len(mined) == 1  # the one query no pair labels related to a fact
    query, fact, label, case = mined[0]
    assert (query, label, case) == ("What does Oslo play?", 0, 1)
    assert fact in ("Paris is located in Rome.", "Cairo is owned by Quito.")  # not the fact it names
    assert nearest_negatives(model.encoder, pairs, anchors, count=0) == []
    every = nearest_negatives(model.encoder, pairs, anchors, count=5)
    assert sorted(f for _, f, _, _ in every) == ["Cairo is owned by Quito.", "Paris is located in Rome."]
    assert nearest_negatives(model.encoder, pairs[:2], anchors, count=1) == []  # every query is about a fact


def test_scope_stage_errors_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scope.data is not set"):
        train_scope(ScopeTrainConfig(), None, None, tmp_path, 0)
    with pytest.raises(FileNotFoundError, match="no file at"):
        train_scope(ScopeTrainConfig(data=str(tmp_path / "missing.json")), None, None, tmp_path, 0)
    with pytest.raises(ValueError, match="hidden >= 1"):
        ScopeTrainConfig(hidden=0)
    with pytest.raises(ValueError, match="casual"):
        ScopeTrainConfig(casual=1.5)
    with pytest.raises(ValueError, match="hard_negatives >= 0"):
        ScopeTrainConfig(hard_negatives=-1)
