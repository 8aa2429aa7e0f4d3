"""Batching across concurrent embedding requests: every request's inputs join one queue in pieces of at most a
batch, and one runner per model takes up to a batch of queued inputs at a time, whoever sent them, and embeds them
on the model's own thread (the event loop never waits on the model). While one batch runs, the next one gathers.

Always the same thread: llama.cpp's OpenMP build ran 2.5x slower when its calls came from changing threads
(measured on all-MiniLM: 160 -> 65 sentences/s at batch 1), and the thread is the one every llama.cpp model of the
process computes on (`engines/compute.py`), since each thread that computes brings its own OpenMP team.

The queue is bounded like the generation scheduler's: a batch's worth of requests plus `queue_size` more may be in
flight; then `embed` raises `QueueFull` (429). A request whose client left is dropped from the queue.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from formats.embeddings.runtime import Embedder
from serving.inference.local.engines import compute
from serving.inference.types import QueueFull

log = logging.getLogger("factory.serving")


@dataclass
class Job:
    """One request's inputs and where their vectors go."""

    inputs: list[list[int]]
    future: asyncio.Future
    vectors: np.ndarray
    remaining: int
    cancelled: bool = False


@dataclass
class Piece:
    job: Job
    start: int
    stop: int


@dataclass
class EmbeddingBatcher:
    embedder: Embedder
    queue_size: int
    name: str = "model"
    queue: deque[Piece] = field(default_factory=deque)
    runner: asyncio.Task | None = None
    thread: ThreadPoolExecutor = field(default_factory=compute.executor)
    in_flight: int = 0  # requests queued or being embedded
    # The counters a generation scheduler keeps, for /metrics: inputs in the running batch, inputs queued, tokens
    # generated (none: an embedding model reads tokens only) and model calls.
    decoding: int = 0
    tokens: int = 0
    steps: int = 0

    @property
    def waiting(self) -> int:
        return sum(piece.stop - piece.start for piece in self.queue)

    async def embed(self, inputs: list[list[int]]) -> np.ndarray:
        if self.in_flight >= self.embedder.max_batch + self.queue_size:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        job = Job(inputs, loop.create_future(), np.zeros((len(inputs), self.embedder.dimensions), np.float32),
                  remaining=len(inputs))
        batch = self.embedder.max_batch
        self.queue.extend(Piece(job, start, min(start + batch, len(inputs))) for start in range(0, len(inputs), batch))
        self.in_flight += 1
        if self.runner is None or self.runner.done():
            self.runner = asyncio.create_task(self._run())
        try:
            return await job.future
        finally:
            job.cancelled = True  # finished, failed, or its client left: nothing more to compute for it
            self.in_flight -= 1

    async def _run(self) -> None:
        while self.queue:
            pieces, taken = [], 0
            while self.queue and taken < self.embedder.max_batch:
                piece = self.queue[0]
                if piece.job.cancelled:
                    self.queue.popleft()
                    continue
                room = self.embedder.max_batch - taken
                if piece.stop - piece.start > room:  # split: the rest waits for the next batch
                    pieces.append(Piece(piece.job, piece.start, piece.start + room))
                    piece.start += room
                    taken += room
                    break
                pieces.append(self.queue.popleft())
                taken += piece.stop - piece.start
            if not pieces:
                continue
            inputs = [tokens for piece in pieces for tokens in piece.job.inputs[piece.start:piece.stop]]
            self.decoding = len(inputs)
            try:
                vectors = await asyncio.get_running_loop().run_in_executor(self.thread, self.embedder.embed, inputs)
            except Exception as exc:  # one failed batch fails its requests, not the model
                log.exception("embedding a batch of %d inputs on %s failed", len(inputs), self.name)
                for piece in pieces:
                    if not piece.job.future.done():
                        piece.job.future.set_exception(exc)
                continue
            finally:
                self.decoding = 0
            self.steps += 1
            offset = 0
            for piece in pieces:
                size = piece.stop - piece.start
                job = piece.job
                job.vectors[piece.start:piece.stop] = vectors[offset:offset + size]
                offset += size
                job.remaining -= size
                if job.remaining == 0 and not job.future.done():
                    job.future.set_result(job.vectors)

    def close(self) -> None:
        """After the last batch (called off the event loop, as unloading is): the compute thread is shared, so wait for
        what it already holds rather than ending it."""
        self.thread.submit(lambda: None).result()
