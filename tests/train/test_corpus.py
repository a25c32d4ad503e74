"""Corpus building on tiny fixture files: sentence splitting, cleaning, WordNet, dedup, split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from larimar.train.corpus import (
    CorpusConfig,
    CorpusStats,
    WordNetEntry,
    build_corpus,
    clean_wiki_text,
    filter_and_deduplicate,
    gloss_sentence,
    load_sentences,
    normalise,
    parse_wordnet_line,
    read_wordnet,
    split_heldout,
    split_sentences,
    wiki_sentences,
    wordnet_sentences,
)

# --------------------------------------------------------------------------- splitting


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It rained. Then it stopped.", ["It rained.", "Then it stopped."]),
        ("Is it? Yes! Fine.", ["Is it?", "Yes!", "Fine."]),
        (
            "He co-wrote it with Arthur C. Clarke. Its plot is simple.",
            ["He co-wrote it with Arthur C. Clarke.", "Its plot is simple."],
        ),
        (
            "He moved to the U.S. in 1990. He stayed.",
            ["He moved to the U.S. in 1990.", "He stayed."],
        ),
        (
            "It is based in Washington, D.C. The city is big.",
            ["It is based in Washington, D.C.", "The city is big."],
        ),
        (
            "She lived on St. Mary's Road with Dr. Smith.",
            ["She lived on St. Mary's Road with Dr. Smith."],
        ),
        ("It cost 3.5 dollars. That is 2.4 euros.", ["It cost 3.5 dollars.", "That is 2.4 euros."]),
        ("Fruit, e.g. Apples, are sweet. Yes.", ["Fruit, e.g. Apples, are sweet.", "Yes."]),
        ("See No. 5 and Vol. 2 of it. Done.", ["See No. 5 and Vol. 2 of it.", "Done."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("It ended (in 1990.) A new era began.", ["It ended (in 1990.)", "A new era began."]),
        (
            "First paragraph ends\nSecond starts here.",
            ["First paragraph ends", "Second starts here."],
        ),
        ("lowercase after a period. does not split", ["lowercase after a period. does not split"]),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            "The cello ( CHEL-oh, Italian pronunciation: [vjolonˈtʃɛllo]), is an instrument.",
            "The cello, is an instrument.",
        ),
        ("A chair ( ) is a seat.", "A chair is a seat."),
        ("Tao Yuanming (陶潜) was a poet (365–427).", "Tao Yuanming was a poet (365–427)."),
        ("Moscow (Москва) is big.", "Moscow is big."),
        ("Water (H2O) is wet.[1] Really.[citation needed]", "Water (H2O) is wet. Really."),
        ("A bee (/biː/) flies.", "A bee flies."),
        ("Light (symbol γ) is fast\xa0indeed.", "Light (symbol γ) is fast indeed."),
        ("Bold <b>text</b> here.", "Bold text here."),
    ],
)
def test_clean_wiki_text(raw: str, clean: str) -> None:
    assert clean_wiki_text(raw) == clean


def test_sentences_that_lost_a_formula_are_dropped() -> None:
    text = "An isomorphism is denoted as \u2060\u2060. It is a bijection."
    assert list(wiki_sentences([text])) == ["It is a bijection."]


# --------------------------------------------------------------------------- WordNet

NOUN_LINES = [
    "  1 This software and database is being provided to you, the LICENSEE, by  \n",
    "08588316 15 n 02 Oakland 0 Oakland_City 0 002 @i 08524735 n 0000 #p 09068444 n 0000 | "
    "a city in western California on San Francisco Bay  \n",
    "02084071 05 n 02 dog 0 domestic_dog 0 001 @ 02083346 n 0000 | a member of the genus Canis "
    'that has been domesticated; "the dog barked all night"  \n',
]
VERB_LINE = (
    "00002325 29 v 01 respire 1 001 @ 02108395 v 0000 01 + 02 00 | undergo the metabolic "
    "processes of respiration  \n"
)
ADJ_LINE = (
    "00001740 00 a 01 able 0 001 ! 00002098 a 0101 | (usually followed by `to') having the "
    'necessary means or skill; "able to swim"; "she was able to program her computer"  \n'
)
SAT_LINE = (
    "00020103 00 s 02 outback(a) 0 remote 0 001 & 00019874 a 0000 | inaccessible and sparsely "
    "populated;  \n"
)


def test_parse_instance_noun_uses_fullest_name() -> None:
    assert parse_wordnet_line(NOUN_LINES[0], "noun") is None
    entry = parse_wordnet_line(NOUN_LINES[1], "noun")
    assert entry == WordNetEntry(
        "Oakland City", "noun", "a city in western California on San Francisco Bay", (), True
    )
    assert (
        gloss_sentence(entry)
        == "Oakland City is a city in western California on San Francisco Bay."
    )


def test_parse_common_noun_with_example() -> None:
    entry = parse_wordnet_line(NOUN_LINES[2], "noun")
    assert entry is not None and not entry.instance
    assert entry.lemma == "dog"
    assert entry.examples == ("the dog barked all night",)
    assert gloss_sentence(entry) == "Dog is a member of the genus Canis that has been domesticated."


def test_parse_verb_and_adjectives() -> None:
    verb = parse_wordnet_line(VERB_LINE, "verb")
    assert verb is not None
    assert (
        gloss_sentence(verb) == "To respire is to undergo the metabolic processes of respiration."
    )
    adj = parse_wordnet_line(ADJ_LINE, "adj")
    assert adj is not None
    assert gloss_sentence(adj) == "Able means having the necessary means or skill."
    assert adj.examples == ("able to swim", "she was able to program her computer")
    satellite = parse_wordnet_line(SAT_LINE, "adj")
    assert satellite is not None and satellite.lemma == "outback"
    assert gloss_sentence(satellite) == "Outback means inaccessible and sparsely populated."


def test_wordnet_sentences_and_sources(tmp_path: Path) -> None:
    path = tmp_path / "data.noun"
    path.write_text("".join(NOUN_LINES))
    pairs = list(wordnet_sentences(read_wordnet(path, "noun")))
    assert [source for _, source in pairs] == ["wordnet_entity", "wordnet_noun", "wordnet_example"]
    assert pairs[2][0] == "The dog barked all night."
    assert len(list(wordnet_sentences(read_wordnet(path, "noun"), examples=False))) == 2


# --------------------------------------------------------------------------- filtering, split


def test_deduplication_ignores_case_and_punctuation(tmp_path: Path) -> None:
    assert normalise("The  Cat, sat!") == normalise("the cat sat")
    config = CorpusConfig(output_dir=tmp_path, min_words=3, max_words=6)
    pairs = [
        ("The cat sat on the mat.", "a"),
        ("THE CAT sat on the  mat!", "b"),
        ("Too short.", "a"),
        ("This one has far too many words to be kept here.", "a"),
        ("no capital letter at the start.", "a"),
        ("An (unbalanced bracket here.", "a"),
    ]
    stats = CorpusStats()
    assert filter_and_deduplicate(pairs, config, stats) == [("The cat sat on the mat.", "a")]
    assert (stats.candidates, stats.duplicates, stats.rejected) == (6, 1, 4)


def test_split_sizes_are_deterministic() -> None:
    items = [(f"Sentence number {i} here.", "s") for i in range(200)]
    train, heldout = split_heldout(items, 0.1, seed=3)
    assert (len(train), len(heldout)) == (180, 20)
    assert sorted(train + heldout) == sorted(items)
    assert split_heldout(items, 0.1, seed=3) == (train, heldout)
    assert split_heldout(items, 0.1, seed=4) != (train, heldout)
    assert split_heldout(items, 0.0, seed=3)[1] == []


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="heldout_fraction"):
        CorpusConfig(output_dir=tmp_path, heldout_fraction=1.0)
    with pytest.raises(ValueError, match="min_words"):
        CorpusConfig(output_dir=tmp_path, min_words=10, max_words=5)
    with pytest.raises(ValueError, match="wordnet_parts"):
        CorpusConfig(output_dir=tmp_path, wordnet_parts=("pronoun",))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- end to end


def write_fixtures(tmp_path: Path) -> tuple[Path, Path]:
    summaries = {
        "Oakland": {
            "title": "Oakland",
            "extract": "Oakland is a city in California, in the U.S. state. It lies on the "
            "east shore of San Francisco Bay. It is big.",
            "description": "City",
            "topic": "Geography",
        },
        "Cello": {
            "title": "Cello",
            "extract": "The cello ( CHEL-oh) is a bowed string instrument of the violin family.\n"
            "It lies on the east shore of San Francisco Bay!",
            "description": "Instrument",
            "topic": "Arts",
        },
    }
    wiki = tmp_path / "summaries.json"
    wiki.write_text(json.dumps(summaries))
    wordnet = tmp_path / "wordnet"
    wordnet.mkdir()
    (wordnet / "data.noun").write_text("".join(NOUN_LINES))
    (wordnet / "data.verb").write_text(VERB_LINE)
    return wiki, wordnet


def test_build_corpus_end_to_end(tmp_path: Path) -> None:
    wiki, wordnet = write_fixtures(tmp_path)
    out = tmp_path / "corpus"
    config = CorpusConfig(
        output_dir=out, wiki_path=wiki, wordnet_dir=wordnet, heldout_fraction=0.25
    )
    stats = build_corpus(config)
    assert stats.per_source == {
        "wikipedia": 3,
        "wordnet_entity": 1,
        "wordnet_noun": 1,
        "wordnet_example": 1,
        "wordnet_verb": 1,
    }
    assert stats.duplicates == 1  # the repeated Oakland sentence
    assert (stats.train, stats.heldout) == (5, 2)
    texts = load_sentences(out / "train.jsonl") + load_sentences(out / "heldout.jsonl")
    assert "The cello is a bowed string instrument of the violin family." in texts
    assert "Oakland is a city in California, in the U.S. state." in texts
    assert "It is big." not in texts  # under five words
    record = json.loads((out / "stats.json").read_text())
    assert record["stats"]["train"] == 5 and record["config"]["heldout_fraction"] == 0.25
    rows = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert all(set(row) == {"text", "source"} for row in rows)
    build_corpus(config)  # a rebuild with the same seed writes the same files
    assert load_sentences(out / "train.jsonl") + load_sentences(out / "heldout.jsonl") == texts


def test_missing_wordnet_is_skipped(tmp_path: Path) -> None:
    wiki, _ = write_fixtures(tmp_path)
    config = CorpusConfig(output_dir=tmp_path / "c", wiki_path=wiki, wordnet_dir=tmp_path / "none")
    assert set(build_corpus(config).per_source) == {"wikipedia"}


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    config = CorpusConfig(output_dir=tmp_path / "c", use_wikipedia=False, wordnet_dir=None)
    with pytest.raises(ValueError, match="no sentences"):
        build_corpus(config)
