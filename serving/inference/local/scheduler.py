"""Continuous batching: one thread per loaded model drives its engine; the event loop only moves tokens.

Requests join the running batch between decode steps and leave it when they finish, hit a stop string, or are
cancelled (a client that disconnects frees its slot at the next step). The queue is bounded: when the batch and
the waiting line are full, `submit` raises `QueueFull` and the API answers 429.

The thread also keeps the model's metrics (`serving.inference.metrics`): each sequence's time to first token and
inter-token latency, tokens and steps, and the batch gauges, written when they change.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from serving.inference import metrics
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
    cached_tokens: int | None = None  # prompt tokens the engine reused from its prefix cache (on the first output)
    arrived: float = 0.0  # perf_counter() when the request reached its model; then when its last token came
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
        self.max_batch = max_batch
        self.capacity = max_batch + queue_size
        self.incoming: deque[Generation] = deque()
        self.cancelled: deque[Generation] = deque()
        self.active: dict[int, Generation] = {}
        self.wake = threading.Event()
        self.stopping = False
        self.steps = 0  # decode steps taken, and tokens generated
        self.tokens = 0
        self.metrics = SchedulerMetrics(name, max_batch)
        self.thread = threading.Thread(target=self._run, name=f"engine:{name}", daemon=True)
        self.thread.start()

    @property
    def load(self) -> int:
        return len(self.active) + len(self.incoming)

    @property
    def decoding(self) -> int:
        """Sequences in the decode batch (the engine holds those beyond `max_batch` back until a place frees)."""
        return min(len(self.active), self.max_batch)

    @property
    def waiting(self) -> int:
        """Sequences submitted that have no place in the decode batch yet."""
        return len(self.incoming) + max(0, len(self.active) - self.max_batch)

    def submit(self, prompt: list[int], params: list[SamplingParams], events: asyncio.Queue,
               arrived: float | None = None) -> list[Generation]:
        """Queue one sequence per parameter set, all or none (called on the event loop); raises QueueFull when the
        model has no room for all of them. `arrived` (perf_counter) starts the time to first token: by default,
        now."""
        if self.load + len(params) > self.capacity:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        arrived = time.perf_counter() if arrived is None else arrived
        generations = [Generation(index=index, prompt=prompt, params=p, events=events, loop=loop, arrived=arrived,
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
            self.metrics.batch(self.decoding, self.waiting)
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
        self.metrics.stopped()

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
        now, produced = time.perf_counter(), 0
        for output in outputs:
            if output.speculation is not None:
                self.metrics.speculated(output.speculation, output.drafted, output.accepted)
            generation = self.active.get(output.uid)
            if generation is None:
                continue
            if output.cached_tokens is not None:
                generation.cached_tokens = output.cached_tokens
                self.metrics.cached(output.cached_tokens)
            if output.finish_reason == "stop":  # the end-of-sequence token itself is not text
                self._finish(generation, "stop")
                continue
            if output.finish_reason == "error":  # this sequence alone failed (its grammar could not continue)
                self._finish(generation, "error", error=output.error)
                continue
            if output.token in generation.params.stop_tokens:  # an end token the engine does not stop on itself
                if output.finish_reason is None:
                    self.engine.remove([output.uid])
                self._finish(generation, "stop")
                continue
            generation.completion_tokens += 1
            produced += 1
            self.metrics.token(generation.completion_tokens == 1, now - generation.arrived)
            generation.arrived = now
            text, hit_stop = generation.stops.feed(generation.detokenizer.add_token(output.token))
            if text or output.logprob is not None:
                generation.emit(TokenEvent(index=generation.index, text=text, logprob=self._logprob(output),
                                           completion_tokens=generation.completion_tokens,
                                           cached_tokens=generation.cached_tokens))
            if hit_stop:
                self.engine.remove([output.uid])
                self._finish(generation, "stop", flush=False)
            elif output.finish_reason == "length":
                self._finish(generation, "length")
        self.tokens += produced
        self.metrics.step(produced)

    def _finish(self, generation: Generation, reason: str, error: str | None = None, flush: bool = True) -> None:
        if generation.finished:
            return
        generation.finished = True
        self.active.pop(generation.uid, None)
        if flush and error is None:
            tail, hit = generation.stops.feed(generation.detokenizer.finalize())
            tail += "" if hit else generation.stops.flush()
            if tail:
                generation.emit(TokenEvent(index=generation.index, text=tail,
                                           completion_tokens=generation.completion_tokens,
                                           cached_tokens=generation.cached_tokens))
        generation.emit(DoneEvent(index=generation.index, finish_reason=reason,
                                  completion_tokens=generation.completion_tokens, error=error,
                                  cached_tokens=generation.cached_tokens,
                                  stop_sequence=generation.stops.matched if generation.stops else None))

    def _logprob(self, output: StepOutput) -> TokenLogprob | None:
        if output.logprob is None:
            return None
        text = self.engine.token_text
        return TokenLogprob(token=text(output.token), logprob=output.logprob,
                            top=[(text(token), value) for token, value in output.top_logprobs or []])


class SchedulerMetrics:
    """One model's metrics as its scheduler thread writes them: label lookups done once, gauges written only when
    they change (under gunicorn every write goes to a shared file). Gauges move by differences, so a scheduler still
    stopping beside a new one for the same version (unloaded, then loaded again) leaves them right."""

    def __init__(self, ref: str, max_batch: int):
        self.first_token = metrics.time_to_first_token.labels(ref)
        self.between_tokens = metrics.inter_token_latency.labels(ref)
        self.tokens, self.steps = metrics.generated_tokens.labels(ref), metrics.decode_steps.labels(ref)
        self.cached_tokens, self.ref = metrics.cached_prompt_tokens.labels(ref), ref
        self.speculation: dict[str, tuple] = {}  # method -> (drafted, accepted) counters
        self.active, self.queued = metrics.sequences_active.labels(ref), metrics.sequences_queued.labels(ref)
        self.slots, self.max_batch = metrics.batch_slots.labels(ref), max_batch
        self.slots.inc(max_batch)
        self.published = (0, 0)

    def token(self, first: bool, seconds: float) -> None:
        (self.first_token if first else self.between_tokens).observe(seconds)

    def step(self, tokens: int) -> None:
        self.steps.inc()
        if tokens:
            self.tokens.inc(tokens)

    def cached(self, tokens: int) -> None:
        if tokens:
            self.cached_tokens.inc(tokens)

    def speculated(self, method: str, drafted: int, accepted: int) -> None:
        if method not in self.speculation:
            self.speculation[method] = (metrics.drafted_tokens.labels(self.ref, method),
                                        metrics.accepted_tokens.labels(self.ref, method))
        drafted_counter, accepted_counter = self.speculation[method]
        drafted_counter.inc(drafted)
        if accepted:
            accepted_counter.inc(accepted)

    def batch(self, active: int, queued: int) -> None:
        (was_active, was_queued), self.published = self.published, (active, queued)
        if active != was_active:
            self.active.inc(active - was_active)
        if queued != was_queued:
            self.queued.inc(queued - was_queued)

    def stopped(self) -> None:
        self.batch(0, 0)
        self.slots.dec(self.max_batch)
