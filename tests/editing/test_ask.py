"""`Larimar.ask`: questions in the chat format, on a tiny model shaped like the built-in one."""

from __future__ import annotations

import pytest

import larimar
from larimar.eval.lm import generate_greedy
from larimar.model.chat import chat_prompt
from tests.tiny import SENTENCES

FACT = "Paris is the capital of France."


def test_a_question_in_scope_is_answered_with_the_written_fact(shipped: larimar.Larimar) -> None:
    """Random weights: only the memory's sequence channel can make the reply the fact."""
    memory = shipped.new_memory()
    [fid] = memory.write([FACT])
    memory.write(SENTENCES[1:4])
    answer = shipped.ask("What is the capital of France?", memory, max_new_tokens=24, scope_threshold=-1.0)
    assert answer.in_scope and answer.fact_id == fid
    assert answer.text == FACT
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which city rules France?"}]
    assert shipped.ask(messages, memory, max_new_tokens=24, scope_threshold=-1.0).text == FACT


def test_out_of_scope_reply_is_the_base_chat_models(shipped: larimar.Larimar) -> None:
    memory = shipped.new_memory()
    memory.write([FACT])
    question = "What is the capital of France?"
    prompt, asked = chat_prompt(shipped.tokenizer, question)
    assert asked == question and prompt.startswith("<user> ") and prompt.endswith("<assistant> ")
    [base] = generate_greedy(shipped.model.decoder.decoder, shipped.tokenizer, [prompt], max_new_tokens=8)
    answer = shipped.ask(question, memory, max_new_tokens=8, scope_threshold=1.0)
    assert not answer.in_scope and answer.text == base.strip()
    assert shipped.ask(question, None, max_new_tokens=8).text == base.strip()


def test_ask_many_equals_one_by_one(shipped: larimar.Larimar) -> None:
    memory = shipped.new_memory()
    memory.write([FACT, SENTENCES[2]])
    questions = ["What is the capital of France?", SENTENCES[5], "Paris is the capital of what?",
                 [{"role": "user", "content": SENTENCES[2][:25]}]]
    threshold = 0.5
    one = [shipped.ask(q, memory, max_new_tokens=10, scope_threshold=threshold) for q in questions]
    many = shipped.ask_many(questions, memory, max_new_tokens=10, scope_threshold=threshold, batch_size=3)
    assert [(a.text, a.in_scope, a.fact_id) for a in many] == [(a.text, a.in_scope, a.fact_id) for a in one]
    # the questions are embedded in one batch: similarities agree to float32 rounding
    assert [a.similarity for a in many] == pytest.approx([a.similarity for a in one], rel=1e-6)
    with pytest.raises(ValueError, match="use ask"):
        shipped.ask_many("one question", memory)  # type: ignore[arg-type]


def test_forgotten_fact_is_no_longer_stated(shipped: larimar.Larimar) -> None:
    memory = shipped.new_memory()
    [fid] = memory.write([FACT])
    memory.write([SENTENCES[3]])
    memory.forget(fid)
    answer = shipped.ask("What is the capital of France?", memory, max_new_tokens=24, scope_threshold=-1.0)
    assert answer.fact_id != fid and answer.text != FACT


@pytest.mark.parametrize(
    ("question", "match"),
    [
        ("  ", "question is empty"),
        ([], "non-empty list of chat messages"),
        ([{"role": "user"}], "'role' and 'content'"),
        ([{"role": "robot", "content": "hi"}], "role 'robot'"),
        ([{"role": "user", "content": ""}], "no text content"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "last message"),
    ],
)
def test_bad_questions_are_explained(shipped: larimar.Larimar, question, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        shipped.ask(question)


def test_a_decoder_without_chat_template_continues_the_question(lm: larimar.Larimar) -> None:
    """The kv-mode tiny model's tokenizer has no chat template: a plain continuation."""
    prompt, asked = chat_prompt(lm.tokenizer, "Who lives in Paris?")
    assert prompt == "Who lives in Paris?\n" and asked == "Who lives in Paris?"
    assert isinstance(lm.ask("Who lives in Paris?", max_new_tokens=3).text, str)


def test_ask_many_takes_one_memory_per_question(shipped: larimar.Larimar) -> None:
    a, b = shipped.new_memory(), shipped.new_memory()
    a.write([FACT])
    b.write([SENTENCES[2]])
    questions = ["What is the capital of France?", "What is the capital of France?"]
    many = shipped.ask_many(questions, [a, b], max_new_tokens=24, scope_threshold=-1.0)
    assert [m.text for m in many] == [shipped.ask(questions[0], m, 24, -1.0).text for m in (a, b)]
    assert many[0].text == FACT and many[1].text != FACT
    with pytest.raises(ValueError, match="one per question"):
        shipped.ask_many(questions, [a])


def test_shipped_shape_generate_and_score_through_the_public_api(shipped: larimar.Larimar, tmp_path) -> None:
    """The raw-continuation path of the shipped configuration: the memory continues a cloze
    prompt with the written fact, lowers the NLL of its answer, and survives a save and load."""
    memory = shipped.new_memory()
    memory.write([FACT, SENTENCES[2]])
    prompt = "Paris is the capital of"
    assert shipped.generate(prompt, memory, max_new_tokens=6, scope_threshold=-1.0).strip() == "France."
    with_memory = shipped.score(prompt, ["France.", "Spain."], memory, scope_threshold=-1.0)
    without = shipped.score(prompt, ["France.", "Spain."])
    assert with_memory[0] < without[0] and with_memory[0] < with_memory[1]
    memory.save(tmp_path / "m.safetensors")
    loaded = shipped.load_memory(tmp_path / "m.safetensors")
    assert shipped.ask("What is the capital of France?", loaded, 24, -1.0).text == FACT
