"""The event hub of one worker: `publish` appends to the shared log (ROOT/events.db, serving/events/log.py); one
tail task per worker reads the log by id and hands every new event, whichever worker wrote it, to this worker's
subscribers (its open WebSockets). The tail only runs while someone listens.

Appends go through one thread, in order, so the event loop never waits on SQLite and a model's `loading` is
never stored after its `loaded`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from serving.events.log import EventLog

log = logging.getLogger("factory.serving.events")
TAIL_S = 0.25  # how often a worker with listeners reads the log: the latency of an event from another worker
QUEUE = 1000  # a subscriber further behind than this misses events rather than holding memory


class EventHub:
    def __init__(self, event_log: EventLog, snapshot: Callable[[], Awaitable[dict[str, Any]]]):
        self.log, self.snapshot_source = event_log, snapshot
        self.subscribers: set[asyncio.Queue] = set()
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events")
        self.tail_task: asyncio.Task | None = None
        self.last_id = 0
        self.worker = os.getpid()

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "time": time.time(), "worker": self.worker, **fields}

    def publish(self, type_: str, *, dedupe: str | None = None, **fields: Any) -> None:
        """Append an event for every worker's listeners; never blocks, never raises (an event is not worth a
        failed request)."""
        event = self.event(type_, **fields)
        try:
            future = self.writer.submit(self.log.append, event, dedupe)
            future.add_done_callback(_report)
        except RuntimeError:  # the worker is shutting down
            pass

    async def append(self, type_: str, *, dedupe: str | None = None, **fields: Any) -> int | None:
        """`publish`, awaited: the event's id (None when `dedupe` was seen before)."""
        return await asyncio.get_running_loop().run_in_executor(self.writer, self.log.append,
                                                                self.event(type_, **fields), dedupe)

    async def snapshot(self) -> dict[str, Any]:
        last = await asyncio.get_running_loop().run_in_executor(self.writer, self.log.last_id)
        return {**self.event("snapshot"), "id": None, **(await self.snapshot_source()), "last_event_id": last}

    async def backlog(self, after: int) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self.writer, self.log.after, after)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue]:
        """A queue of every event appended from now on (by any worker) until the block ends."""
        queue: asyncio.Queue = asyncio.Queue(QUEUE)
        if self.tail_task is None or self.tail_task.done():
            self.last_id = await asyncio.get_running_loop().run_in_executor(self.writer, self.log.last_id)
            self.tail_task = asyncio.create_task(self._tail(), name="events-tail")
        self.subscribers.add(queue)
        try:
            yield queue
        finally:
            self.subscribers.discard(queue)

    async def _tail(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TAIL_S)
            try:
                events = await loop.run_in_executor(self.writer, self.log.after, self.last_id)
            except Exception:  # a locked or briefly unreadable file: try again on the next tick
                log.exception("reading the event log failed")
                continue
            for event in events:
                self.last_id = event["id"]
                for queue in list(self.subscribers):
                    if not queue.full():
                        queue.put_nowait(event)
            if not self.subscribers:
                break

    async def stop(self) -> None:
        if self.tail_task is not None:
            self.tail_task.cancel()
        self.writer.shutdown(wait=False)


def _report(future) -> None:
    if future.exception() is not None:
        log.warning("an event was not stored: %s", future.exception())
