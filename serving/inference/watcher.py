"""Hot reload: each worker polls the registry's generation counter and lets the pool swap in new versions.

Polling one integer in SQLite costs well under a millisecond and needs no file-system events. It is for one host:
SQLite's WAL mode and the registry's `flock` are not safe on network file systems, so several hosts cannot share
one registry directory this way (scaling out goes through the registry's storage interface, later work).
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.inference.pool import ModelPool

log = logging.getLogger("factory.serving")


class RegistryWatcher:
    def __init__(self, pool: "ModelPool", interval_s: float):
        self.pool = pool
        self.interval_s = interval_s
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.pool.refresh()  # routes are known before the first request is served
        self.task = asyncio.create_task(self._run(), name="registry-watcher")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if await self.pool.refresh():
                    log.info("registry changed; routes: %s", self.pool.routes)
                self.pool.evict()
            except Exception:  # keep watching: a transient registry read error must not end hot reload
                log.exception("registry refresh failed")
