"""Micro-batched asks: concurrent asks share the decoder's forward passes.

`Batcher` hands requests from many threads to one worker, which takes what queued up while the
previous batch ran and, while asks come concurrently, waits a short window after the first for
others to join; it answers them with one call of a batch function. The batch function is a plain callable, so the service can use
`larimar_ask_many` below or any other (say a future `Larimar.ask_many`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from ..editing import Answer, Larimar, Memory

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class AskRequest:
    """One ask, as the batcher passes it on."""

    prompt: str
    memory: Memory
    max_new_tokens: int
    scope_threshold: float | None


In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    """Answer `submit(item)` calls from many threads in batches of at most `max_batch`.

    `run(items)` returns one result per item, in order; if it raises, each item of that batch is
    run alone so one bad request fails only itself.
    """

    def __init__(self, run: Callable[[Sequence[In]], list[Out]], max_batch: int = 8, wait_s: float = 0.002) -> None:
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0; got {max_batch}, {wait_s}")
        self.run, self.max_batch, self.wait_s = run, max_batch, wait_s
        self._queue: queue.Queue[tuple[In, Future[Out]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="larimar-ask-batcher", daemon=True)
        self._worker.start()
        self._last = 1
        self.on_batch: Callable[[int], None] | None = None
        """Called with the size of each batch (metrics)."""

    def submit(self, item: In) -> Out:
        """The result for `item`, computed in a batch with concurrent submissions (blocks)."""
        if not self._worker.is_alive():
            raise RuntimeError("the ask batcher is stopped; the server is shutting down")
        future: Future[Out] = Future()
        self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            # wait for company only while asks come concurrently (the last batch had several):
            # a lone client pays at most a millisecond
            wait = self.wait_s if self._last > 1 else min(self.wait_s, 0.001)
            deadline = time.monotonic() + wait
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[tuple[In, Future[Out]]]) -> None:
        self._last = len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        items = [item for item, _ in batch]
        try:
            results = self.run(items)
        except Exception as err:  # noqa: BLE001  (isolate the failing request below)
            if len(batch) == 1:
                batch[0][1].set_exception(err)
                return
            for pair in batch:
                self._answer([pair])
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)


def larimar_ask_many(lm: Larimar) -> Callable[[Sequence[AskRequest]], list[Answer]]:
    """A batch function for `Batcher`: the same answers as `lm.ask` on each request, decoded together.

    Requests with the same token budget and scope threshold go to one `Larimar.ask_many` call,
    each with its own memory (its own scope decision and readout).
    """

    @torch.no_grad()
    def ask_many(requests: Sequence[AskRequest]) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(requests)
        groups: dict[tuple[int, float | None], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_new_tokens, r.scope_threshold), []).append(i)
        for (tokens, threshold), rows in groups.items():
            got = lm.ask_many([requests[i].prompt for i in rows], [requests[i].memory for i in rows],
                              max_new_tokens=tokens, scope_threshold=threshold, batch_size=len(rows))
            for i, answer in zip(rows, got):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    return ask_many
