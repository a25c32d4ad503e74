"""Question episodes in the chat format for late-fusion training (`larimar.train.questions`),
trained with the sequence channel present, on tiny random models."""

import json
import random

import pytest
import torch

from larimar.memory import MemoryConfig
from larimar.model import ConditioningConfig, LarimarConfig, LarimarModel
from larimar.model.sequence import START
from larimar.train.config import FusionConfig, LoopConfig, OptimConfig, TrainConfig
from larimar.train.data import DataConfig
from larimar.train.cache import load_shard
from larimar.train.fusion import FusionTrainer, reply_contexts
from larimar.train.questions import QA_SHAPES, corpus_pairs, load_examples, question_pairs
from larimar.train.scope import RECORD_TEMPLATES, TEMPLATES
from tests import tiny

CODE, SKETCH = 16, 512
RECORDS = [
    {"prompt": "Paris is located in", "subject": "Paris", "target_new": "Germany"},
    {"prompt": "Berlin is located in", "subject": "Berlin", "target_new": "France"},
    {"prompt": "Toko Yasuda performs on the", "subject": "Toko Yasuda", "target_new": "piano"},
    {"prompt": "John Lennon, the", "subject": "John Lennon", "target_new": "guitar"},  # no question form
    {"prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux", "target_new": "French"},
]


def test_question_pairs_ask_about_the_written_fact():
    pairs = question_pairs(RECORDS, cases=10, templated=0, casual_share=0.0, seed=0)
    facts = {fact: question for fact, question in pairs}
    assert set(facts) == {"Paris is located in Germany.", "Berlin is located in France.",
                          "Toko Yasuda performs on the piano.", "The mother tongue of Danielle Darrieux is French."}
    assert facts["Paris is located in Germany."] in ("Where is Paris located?", "Where can Paris be found?")
    assert "Danielle Darrieux" in facts["The mother tongue of Danielle Darrieux is French."]
    assert question_pairs(RECORDS, 10, 0, 0.0, seed=0) == pairs  # seeded
    assert len(question_pairs(RECORDS, 2, 0, 0.0, seed=0)) == 2
    templated = question_pairs([], cases=0, templated=40, casual_share=1.0, seed=3)
    assert 20 <= len(templated) <= 40  # one question per distinct fact
    forms = [form.split("{")[0] for form, _ in TEMPLATES + RECORD_TEMPLATES]
    for fact, question in templated:
        assert any(fact.startswith(f) for f in forms)
        assert question == question.lower() and not question.endswith("?")  # typed casually


CORPUS = [
    ("Oakland is a city in western California on San Francisco Bay.", "wordnet_entity"),
    ("To respire is to undergo the biomolecular reactions of respiration.", "wordnet_verb"),
    ("Able means having the necessary means or skill to do something.", "wordnet_adj"),
    ("Dog is a member of the genus Canis.", "wordnet_noun"),
    ("The Eiffel Tower is a wrought-iron lattice tower in Paris.", "wikipedia"),
    ("It is the largest city of the region.", "wikipedia"),  # no subject to ask about
    ("He spoke calmly to the students.", "wordnet_example"),
]


def test_corpus_sentences_that_define_their_subject_are_asked_about_it():
    pairs = dict(corpus_pairs(CORPUS, 10, random.Random(0)))
    assert set(pairs) == {text for text, _ in CORPUS[:5]}
    assert pairs[CORPUS[0][0]] in ("What is Oakland?", "Tell me about Oakland.", "What do you know about Oakland?")
    assert pairs[CORPUS[1][0]] in ("What does it mean to respire?", "What does 'respire' mean?")
    assert "able" in pairs[CORPUS[2][0]] and "dog" in pairs[CORPUS[3][0]]
    assert "the Eiffel Tower" in pairs[CORPUS[4][0]]
    assert len(corpus_pairs(CORPUS, 2, random.Random(0))) == 2
    assert corpus_pairs([], 5, random.Random(0)) == []


def test_question_and_answer_facts_are_asked_in_the_other_wording():
    pairs = question_pairs(RECORDS, cases=1, templated=0, casual_share=0.0, seed=4, qa=3)
    assert len(pairs) == 4
    shapes = [shape.split("{q}")[0] for shape in QA_SHAPES]
    qa = [(fact, q) for fact, q in pairs if "?" in fact]
    assert len(qa) == 3
    for fact, question in qa:
        written = fact.split("?")[0] + "?"
        assert any(written.startswith(s) for s in shapes if s) or fact.startswith(written)
        assert question not in fact  # asked in the relation's other wording
        assert fact.rstrip(".").split()[-1] in ("Germany", "France", "piano", "French")


def test_templated_facts_hold_dates_passwords_and_codes():
    pairs = question_pairs([], cases=0, templated=400, casual_share=0.0, seed=1)
    facts = " ".join(fact for fact, _ in pairs)
    assert "was born on" in facts and "password" in facts and "badge number" in facts
    assert any(month in facts for month in ("January", "March", "October"))


def test_examples_are_formatted_as_the_decoder_reads_a_question(tmp_path):
    tok = tiny.bpe_tokenizer()
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(RECORDS))
    examples = load_examples(path, tok, cases=10, templated=0, casual_share=0.0, seed=0)
    assert len(examples) == 4
    assert all(e.prompt == e.question + "\n" for e in examples)  # no chat template: a plain continuation
    with pytest.raises(FileNotFoundError, match="CounterFact train split"):
        load_examples(tmp_path / "missing.json", tok, 10, 0, 0.0, 0)
    with pytest.raises(FileNotFoundError, match="larimar corpus"):
        load_examples(path, tok, 10, 0, 0.0, 0, corpus=tmp_path / "none.jsonl", corpus_count=3)
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "source": s}) + "\n" for t, s in CORPUS))
    examples = load_examples(path, tok, cases=10, templated=0, casual_share=0.0, seed=0, corpus=corpus, corpus_count=3)
    assert len(examples) == 7 and sum(e.fact in dict(CORPUS) for e in examples) == 3


def test_reply_contexts_restart_where_the_reply_starts():
    ids = torch.tensor([7, 8, 9, 20, 21, 2])
    positions, previous, tokens = reply_contexts(ids, 3)
    assert positions == [2, 3, 4]
    targets = ids[torch.tensor(positions) + 1].tolist()
    # the triples a written reply's sketch holds: (START, START) -> 20, (START, 20) -> 21, (20, 21) -> eos
    assert list(zip(previous.tolist(), tokens.tolist(), targets)) == [(START, START, 20), (START, 20, 21), (20, 21, 2)]


def test_config_checks_question_settings():
    with pytest.raises(ValueError, match="needs fusion.questions"):
        FusionConfig(question_sentences=4)
    with pytest.raises(ValueError, match="sequence_dropout"):
        FusionConfig(sequence_dropout=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        FusionConfig(question_cases=-1)
    with pytest.raises(ValueError, match="question_corpus"):
        FusionConfig(question_corpus=-1)


def _model_config() -> LarimarConfig:
    return LarimarConfig(
        memory=MemoryConfig(slots=12, code_size=CODE + SKETCH, key_size=CODE),
        conditioning=ConditioningConfig(code_size=CODE, mode="output", embedding_offset=False, fusion_hidden=32,
                                        sequence_size=SKETCH, sequence_confidence=0.95),
        lexical_tokens=4,
    )


def test_tiny_model_trains_on_statements_and_questions_with_the_sequence_channel(tmp_path):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(RECORDS))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t, "source": s}) + "\n" for t, s in CORPUS))
    config = TrainConfig(
        output_dir=str(tmp_path / "run"), seed=2, model=_model_config(),
        data=DataConfig(corpus=str(tmp_path), max_tokens=24, swap_last_word=0.0),
        optim=OptimConfig(lr=1e-2, warmup_steps=2, schedule="constant"),
        loop=LoopConfig(max_steps=60, log_every=1, eval_every=1000, save_every=1000, eval_sentences=4),
        fusion=FusionConfig(batch_sentences=8, episode_sizes=(1, 2), extra_positions=0, shard_size=5,
                            sequence_dropout=0.5, questions=str(path), question_cases=2, question_qa=2,
                            question_templated=6, question_corpus=4,
                            question_sentences=4, question_max_tokens=128),
    )
    torch.manual_seed(0)
    enc_tok, dec_tok = tiny.bert_tokenizer(), tiny.bpe_tokenizer()
    model = LarimarModel.from_modules(config.model, tiny.bert(enc_tok), enc_tok, tiny.llama(dec_tok), dec_tok)
    model.init_copy_path(logit_scale=3.0)
    trainer = FusionTrainer(config, model, (tiny.SENTENCES * 2, tiny.SENTENCES[:4]))
    result = trainer.train()
    assert result.finished
    shards = sorted((tmp_path / "run" / "cache" / "questions").glob("shard-*.pt"))
    assert shards
    loaded = [load_shard(path, model) for path in shards]
    assert all(shard.chat for shard in loaded) and sum(map(len, loaded)) >= 10
    for path, shard in zip(shards, loaded):
        for ids, start, fact in zip(shard.ids, shard.answer, torch.load(path, weights_only=False)["written"]):
            assert dec_tok.decode(ids[start:]) == fact + "<eos>"  # the reply states the fact and ends
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    curve = [r["loss"] for r in map(json.loads, log) if "loss" in r]
    assert sum(curve[-10:]) / 10 < 0.8 * sum(curve[:5]) / 5
