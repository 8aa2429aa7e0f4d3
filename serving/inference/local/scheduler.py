"""Continuous batching: one thread per loaded model drives its engine; the event loop only moves tokens.

Requests join the running batch between decode steps and leave it when they finish, hit a stop string, or are
cancelled (a client that disconnects frees its slot at the next step). The queue is bounded: when the batch and
the waiting line are full, `submit` raises `QueueFull` and the API answers 429.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass

from serving.inference.local.engines.base import Detokenizer, Engine, StepOutput
from serving.inference.local.stops import StopMatcher
from serving.inference.types import DoneEvent, Event, QueueFull, SamplingParams, TokenEvent, TokenLogprob

log = logging.getLogger("factory.serving")


@dataclass
class Generation:
    """One sequence being generated: the scheduler thread puts its events on `events`, which the sequences of one
    request share (each event carries the sequence's `index`); the event loop reads them."""

    index: int
    prompt: list[int]
    params: SamplingParams
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    completion_tokens: int = 0
    uid: int | None = None
    cancelled: bool = False
    finished: bool = False
    detokenizer: Detokenizer | None = None
    stops: StopMatcher | None = None

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Scheduler:
    def __init__(self, engine: Engine, max_batch: int, queue_size: int, name: str = "model"):
        self.engine = engine
        self.capacity = max_batch + queue_size
        self.incoming: deque[Generation] = deque()
        self.cancelled: deque[Generation] = deque()
        self.active: dict[int, Generation] = {}
        self.wake = threading.Event()
        self.stopping = False
        self.steps = 0  # decode steps taken, and tokens generated: for /metrics
        self.tokens = 0
        self.thread = threading.Thread(target=self._run, name=f"engine:{name}", daemon=True)
        self.thread.start()

    @property
    def load(self) -> int:
        return len(self.active) + len(self.incoming)

    def submit(self, prompt: list[int], params: list[SamplingParams], events: asyncio.Queue) -> list[Generation]:
        """Queue one sequence per parameter set, all or none (called on the event loop); raises QueueFull when the
        model has no room for all of them."""
        if self.load + len(params) > self.capacity:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        generations = [Generation(index=index, prompt=prompt, params=p, events=events, loop=loop,
                                  detokenizer=self.engine.detokenizer(), stops=StopMatcher(p.stop))
                       for index, p in enumerate(params)]
        self.incoming.extend(generations)
        self.wake.set()
        return generations

    def cancel(self, generation: Generation) -> None:
        if not generation.finished:
            generation.cancelled = True
            self.cancelled.append(generation)
            self.wake.set()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout=30)

    # ------------------------------------------------------------ engine thread

    def _run(self) -> None:
        while not self.stopping:
            if not self.active and not self.incoming:
                self.wake.wait(timeout=1.0)
                self.wake.clear()
                continue
            try:
                self._admit_and_cancel()
                if self.active:
                    self._deliver(self.engine.step())
                    self.steps += 1
            except Exception as exc:  # a broken step fails its requests, never the server
                log.exception("engine step failed")
                failed = list(self.active.values())
                try:
                    self.engine.remove(list(self.active))  # free their engine state, so later requests start clean
                except Exception:
                    log.exception("engine could not drop the failed sequences")
                for generation in failed:
                    self._finish(generation, "error", error=f"{type(exc).__name__}: {exc}")
                self.active.clear()
        for generation in [*self.active.values(), *self.incoming]:
            self._finish(generation, "error", error="the model was unloaded")

    def _admit_and_cancel(self) -> None:
        while self.cancelled:
            generation = self.cancelled.popleft()
            if generation.uid is not None and generation.uid in self.active:
                self.engine.remove([generation.uid])
                del self.active[generation.uid]
            generation.finished = True
        while self.incoming:
            generation = self.incoming.popleft()
            if generation.cancelled:
                continue
            try:
                generation.uid = self.engine.insert(generation.prompt, generation.params)
            except Exception as exc:  # a request the engine refuses fails alone, never the batch it would join
                log.exception("engine refused a sequence")
                self._finish(generation, "error", error=f"{type(exc).__name__}: {exc}")
                continue
            self.active[generation.uid] = generation

    def _deliver(self, outputs: list[StepOutput]) -> None:
        for output in outputs:
            generation = self.active.get(output.uid)
            if generation is None:
                continue
            if output.finish_reason == "stop":  # the end-of-sequence token itself is not text
                self._finish(generation, "stop")
                continue
            generation.completion_tokens += 1
            self.tokens += 1
            text, hit_stop = generation.stops.feed(generation.detokenizer.add_token(output.token))
            if text or output.logprob is not None:
                generation.emit(TokenEvent(index=generation.index, text=text, logprob=self._logprob(output)))
            if hit_stop:
                self.engine.remove([output.uid])
                self._finish(generation, "stop", flush=False)
            elif output.finish_reason == "length":
                self._finish(generation, "length")

    def _finish(self, generation: Generation, reason: str, error: str | None = None, flush: bool = True) -> None:
        if generation.finished:
            return
        generation.finished = True
        self.active.pop(generation.uid, None)
        if flush and error is None:
            tail, hit = generation.stops.feed(generation.detokenizer.finalize())
            tail += "" if hit else generation.stops.flush()
            if tail:
                generation.emit(TokenEvent(index=generation.index, text=tail))
        generation.emit(DoneEvent(index=generation.index, finish_reason=reason,
                                  completion_tokens=generation.completion_tokens, error=error))

    def _logprob(self, output: StepOutput) -> TokenLogprob | None:
        if output.logprob is None:
            return None
        text = self.engine.token_text
        return TokenLogprob(token=text(output.token), logprob=output.logprob,
                            top=[(text(token), value) for token, value in output.top_logprobs or []])
