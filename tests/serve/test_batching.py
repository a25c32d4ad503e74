"""Micro-batched asks: the same answers as one by one, whatever joins a batch."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
import torch
from fastapi.testclient import TestClient

import larimar
from larimar.serve import threads
from larimar.serve.batching import Batcher, larimar_ask_many
from larimar.serve.batching import AskRequest
from tests.serve.conftest import AppFactory, MemoryHandle

FACTS = ["Paris is the capital of France.", "The cat sat on the mat in the park.", "Berlin is the capital of Germany."]
PROMPTS = ["Paris is the capital of", "The cat sat on the", "Berlin is the capital of", "Once upon a time", "Hello"]


def test_batched_answers_equal_one_by_one(lm: larimar.Larimar) -> None:
    first, second = lm.new_memory(), lm.new_memory()
    first.write(FACTS[:2])
    second.write(FACTS[2:])
    requests = [AskRequest(p, m, n, t) for p in PROMPTS for m in (first, second, lm.new_memory())
                for n, t in ((3, None), (5, 0.0), (5, 1.0))]
    assert len({(r.memory is first, lm.scope(r.prompt, r.memory, r.scope_threshold).in_scope) for r in requests}) >= 3
    batched = larimar_ask_many(lm)(requests)
    alone = [lm.ask(r.prompt, r.memory, max_new_tokens=r.max_new_tokens, scope_threshold=r.scope_threshold)
             for r in requests]
    assert [(a.text, a.in_scope, a.fact_id) for a in batched] == [(a.text, a.in_scope, a.fact_id) for a in alone]
    for a, b in zip(batched, alone):
        assert (a.similarity is None) == (b.similarity is None)
        if a.similarity is not None:
            assert a.similarity == pytest.approx(b.similarity, rel=1e-6)


def test_batcher_groups_concurrent_submissions_and_isolates_failures() -> None:
    sizes: list[int] = []

    def run(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        if any(i < 0 for i in items):
            raise ValueError(f"negative item in {list(items)}")
        time.sleep(0.02)
        return [2 * i for i in items]

    batcher: Batcher[int, int] = Batcher(run, max_batch=4, wait_s=0.05)
    results: dict[int, int | str] = {}

    def submit(i: int) -> None:
        try:
            results[i] = batcher.submit(i)
        except ValueError as err:
            results[i] = str(err)

    threads = [threading.Thread(target=submit, args=(i,)) for i in (1, 2, 3, -4, 5, 6, 7, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert {i: r for i, r in results.items() if i >= 0} == {i: 2 * i for i in (1, 2, 3, 5, 6, 7, 8)}
    assert results[-4] == "negative item in [-4]"  # failed alone; its batch mates were answered
    assert max(sizes) > 1


def test_concurrent_asks_through_the_api_equal_one_by_one(make_app: AppFactory, lm: larimar.Larimar) -> None:
    client = TestClient(make_app(ask_batch=8, ask_wait_ms=50))
    memory = MemoryHandle(client)
    memory.write(*FACTS)
    answers: dict[int, dict[str, object]] = {}

    def ask(i: int) -> None:
        body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": 4}
        answers[i] = client.post(memory.url("/ask"), json=body, headers=memory.headers).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = client.app.state.service._memory(memory.id)  # type: ignore[attr-defined]
    for i, got in answers.items():
        want = lm.ask(PROMPTS[i % len(PROMPTS)], stored, max_new_tokens=4)
        assert (got["text"], got["in_scope"], got["fact_id"]) == (want.text, want.in_scope, want.fact_id)
    batches = [s for (name, _), s in _histogram(client).items() if name == "larimar_ask_batch_size_count"]
    assert batches and batches[0] < 10  # fewer decoder batches than asks


def _histogram(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from tests.serve.test_observe import samples

    return samples(client)


def test_ask_loop_answers_late_and_short_asks_like_ask_and_isolates_a_bad_one(lm: larimar.Larimar) -> None:
    from larimar.serve.batching import AskLoop

    memory = lm.new_memory()
    memory.write(FACTS)
    requests = [AskRequest(p, memory, n, t) for p, n, t in
                [(PROMPTS[0], 9, None), (PROMPTS[1], 2, 0.0), (PROMPTS[3], 7, None), (PROMPTS[4], 1, 1.0),
                 (PROMPTS[2], 5, 7.0), (PROMPTS[1], 8, None)]]  # threshold 7.0 is invalid
    loop = AskLoop(lm, max_batch=3, wait_s=0.005)
    got: dict[int, object] = {}

    def submit(i: int) -> None:
        time.sleep(0.05 * i)  # later asks join while earlier ones decode
        try:
            got[i] = loop.submit(requests[i])
        except ValueError as err:
            got[i] = err

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loop.close()
    assert isinstance(got[4], ValueError) and "scope_threshold" in str(got[4])
    for i, r in enumerate(requests):
        if i != 4:
            want = lm.ask(r.prompt, r.memory, max_new_tokens=r.max_new_tokens, scope_threshold=r.scope_threshold)
            assert (got[i].text, got[i].in_scope, got[i].fact_id) == (want.text, want.in_scope, want.fact_id)  # type: ignore[union-attr]
    assert loop.loop.active == 0


def test_only_the_ask_loop_runs_torch_on_several_cores(make_app: AppFactory, lm: larimar.Larimar,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Request threads create memories, write and score on one core; the ask loop decodes on
    `threads.CORES`. (A memory created on every core left a second OpenMP team behind, and
    batched asks ran 1.5x slower.)"""
    monkeypatch.setattr(threads, "CORES", 3)  # not the machine's count, so that the loop must set it
    seen: dict[str, int] = {}

    def recording(name: str, real):
        def call(*args, **kwargs):
            seen[name] = torch.get_num_threads()
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(lm, "reply_rows", recording("ask loop", lm.reply_rows))
    monkeypatch.setattr(lm, "score", recording("score", lm.score))
    monkeypatch.setattr(larimar.Memory, "write", recording("write", larimar.Memory.write))
    monkeypatch.setattr(lm, "new_memory", recording("create", lm.new_memory))
    client = TestClient(make_app())
    memory = MemoryHandle(client)
    memory.write(FACTS[0])
    ask = {"prompt": PROMPTS[0], "max_new_tokens": 2}
    assert client.post(memory.url("/ask"), json=ask, headers=memory.headers).status_code == 200
    score = {"prompt": PROMPTS[0], "candidates": ["France"]}
    assert client.post(memory.url("/score"), json=score, headers=memory.headers).status_code == 200
    assert seen == {"create": 1, "write": 1, "ask loop": 3, "score": 1}
