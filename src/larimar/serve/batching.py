"""Batched asks: concurrent asks share the decoder's forward passes.

`AskLoop` (what the service uses) decodes asks continuously: one worker keeps a running batch
(`larimar.model.decoding.DecodeLoop`), admits the asks that arrived before each decoding step and
answers each as soon as its reply ends, so a short reply never waits for a long one and a new ask
never waits for a batch to finish. `Batcher` is the simpler scheme for any batch function: it
hands requests from many threads to one worker, which takes what queued up while the previous
batch ran (waiting a short window after the first while asks come concurrently) and answers them
with one call (e.g. `larimar_ask_many` below).
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
from ..editing.larimar import ScopeDecision
from ..model.decoding import supports
from .threads import all_cores

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
        all_cores()
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


class AskLoop:
    """Continuous batching of asks for `Larimar.ask`: the same answers, at most `max_batch` decoding at once.

    Each prefill is a decoder pass of its own, so asks are admitted in groups: when idle, asks
    are gathered while they keep coming, each within `wait_s` of the previous (a lone client
    waits at most 1 ms); while decoding, waiting asks join before the next step once they fill
    the free rows or the first of them has waited `hold_s` (default 10 x `wait_s`). A request
    that fails (say a bad scope threshold) fails alone.
    """

    def __init__(self, lm: Larimar, max_batch: int = 8, wait_s: float = 0.002, hold_s: float | None = None) -> None:
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0; got {max_batch}, {wait_s}")
        self.lm, self.max_batch, self.wait_s = lm, max_batch, wait_s
        self.hold_s = 10 * wait_s if hold_s is None else hold_s
        self.loop = lm.reply_loop()
        self._queue: queue.Queue[tuple[AskRequest, Future[Answer], float] | None] = queue.Queue()
        self._waiting: list[tuple[AskRequest, Future[Answer], float]] = []
        self._pending: dict[int, tuple[Future[Answer], ScopeDecision]] = {}
        self._last, self._next_key, self._stop = 1, 0, False
        self.on_batch: Callable[[int], None] | None = None
        """Called with the number of asks decoding together after each admission (metrics)."""
        self._worker = threading.Thread(target=self._run, name="larimar-ask-loop", daemon=True)
        self._worker.start()

    def submit(self, request: AskRequest) -> Answer:
        """The answer to `request`, decoded together with concurrent ones (blocks)."""
        if not self._worker.is_alive():
            raise RuntimeError("the ask loop is stopped; the server is shutting down")
        future: Future[Answer] = Future()
        self._queue.put((request, future, time.monotonic()))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _take(self, timeout: float | None) -> bool:
        """Move one queued ask to the waiting list (block up to `timeout`; None: do not block)."""
        try:
            item = self._queue.get_nowait() if timeout is None else self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        if item is None:
            self._stop = True
            return False
        self._waiting.append(item)
        return True

    def _arrivals(self) -> list[tuple[AskRequest, Future[Answer]]]:
        """The asks to admit now (see the class docstring)."""
        if not self._pending and not self._waiting and not self._take(timeout=3600.0):
            return []
        while self._take(timeout=None):
            pass
        if not self._pending:
            gap = self.wait_s if self._last > 1 else min(self.wait_s, 0.001)
            while len(self._waiting) < self.max_batch and not self._stop and self._take(timeout=gap):
                pass
            room = self.max_batch
        else:
            room = self.max_batch - len(self._pending)
            ready = self._waiting and (len(self._waiting) >= room or self._stop or
                                       time.monotonic() - self._waiting[0][2] >= self.hold_s)
            if room <= 0 or not ready:
                return []
        admitted, self._waiting = self._waiting[:room], self._waiting[room:]
        return [(request, future) for request, future, _ in admitted]

    def _run(self) -> None:
        all_cores()  # the one thread of the server whose torch ops use every core (`threads`)
        while not (self._stop and not self._pending and not self._waiting):
            self._admit(self._arrivals())
            if not self.loop.active:
                continue
            try:
                ended = self.loop.step()
            except Exception as err:  # noqa: BLE001  (fail the asks decoding now; the loop goes on)
                logger.exception("decoding step failed")
                for key in self.loop.drop():
                    self._pending.pop(key)[0].set_exception(err)
                continue
            self._finish(ended)

    def _admit(self, arrivals: list[tuple[AskRequest, Future[Answer]]]) -> None:
        groups: dict[tuple[int, float | None], list[tuple[AskRequest, Future[Answer]]]] = {}
        for request, future in arrivals:  # one scope batch per (budget, threshold)
            groups.setdefault((request.max_new_tokens, request.scope_threshold), []).append((request, future))
        rows = []
        for (tokens, threshold), group in groups.items():
            try:
                prepared = self.lm.reply_rows([r.prompt for r, _ in group], [r.memory for r, _ in group], tokens,
                                              threshold, keys=range(self._next_key, self._next_key + len(group)))
            except Exception:  # noqa: BLE001  (a bad request: prepare each alone, so it fails alone)
                prepared = []
                for offset, (request, future) in enumerate(group):
                    try:
                        prepared += self.lm.reply_rows([request.prompt], [request.memory], tokens, threshold,
                                                       keys=[self._next_key + offset])
                    except Exception as err:  # noqa: BLE001
                        future.set_exception(err)
            for row, decision in prepared:
                self._pending[row.key] = (group[row.key - self._next_key][1], decision)
                rows.append(row)
            self._next_key += len(group)
        if not rows:
            return
        try:
            ended = self.loop.add(rows)
        except Exception as err:  # noqa: BLE001
            logger.exception("prefilling %d asks failed", len(rows))
            active = self.loop.keys()
            for row in rows:
                if row.key not in active:
                    self._pending.pop(row.key)[0].set_exception(err)
            return
        self._last = self.loop.active + len(ended)  # asks decoding together: gather the next burst if > 1
        if self.on_batch is not None:
            self.on_batch(self._last)
        self._finish(ended)

    def _finish(self, ended: list[tuple[object, list[int]]]) -> None:
        for key, ids in ended:
            future, decision = self._pending.pop(key)  # type: ignore[call-overload]
            try:
                future.set_result(self.lm.reply(ids, decision))
            except Exception as err:  # noqa: BLE001
                future.set_exception(err)


def ask_engine(lm: Larimar, ask_many: Callable[[Sequence[AskRequest]], list[Answer]] | None, max_batch: int,
               wait_s: float) -> AskLoop | Batcher[AskRequest, Answer] | None:
    """What batches the service's asks: None for `max_batch` 1, a `Batcher` of a given `ask_many`
    (or for decoders `DecodeLoop` does not support), else an `AskLoop`."""
    if max_batch <= 1:
        return None
    if ask_many is None and supports(lm.model.decoder):
        return AskLoop(lm, max_batch, wait_s)
    return Batcher(ask_many or larimar_ask_many(lm), max_batch=max_batch, wait_s=wait_s)
