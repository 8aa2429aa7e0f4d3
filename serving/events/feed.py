"""One worker's live feed, assembled: the hub over ROOT/events.db, what feeds it (the registry watcher, the job
poller, the pool's load and unload listener, provider health changes) and the snapshot a new WebSocket gets.
Falcon middleware for its startup and shutdown: the watchers run as tasks of the worker's event loop."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from factory.registry import Registry
from serving.events.hub import EventHub
from serving.events.log import EventLog
from serving.events.sources import JobEvents, RegistryEvents
from serving.inference.handle import ModelCatalog
from serving.inference.types import ProviderStatus
from serving.jobs import FineTuneJobs


def events_path(root: Path) -> Path:
    return Path(root) / "events.db"


class LiveFeed:
    def __init__(self, root: Path, registry: Registry, models: ModelCatalog, pool: Any, fine_tunes: FineTuneJobs,
                 builds: Any, poll_s: float):
        self.registry, self.models = registry, models
        self.hub = EventHub(EventLog(events_path(root)), self.snapshot)
        self.sources = [RegistryEvents(registry, self.hub, poll_s), JobEvents(self.hub, fine_tunes, builds)]
        self.tasks: list[asyncio.Task] = []
        if hasattr(pool, "listeners"):  # the local pool (a test's scripted catalog may have none)
            pool.listeners.append(self.hub.publish)
        models.subscribe_providers(self._provider_changed)

    def _provider_changed(self, status: ProviderStatus, previous: str) -> None:
        self.hub.publish("provider.health", provider=status.name, state=status.state, reason=status.reason,
                         previous=previous)

    async def snapshot(self) -> dict[str, Any]:
        def registry_summary() -> dict[str, Any]:
            versions: dict[str, list[int]] = {}
            for version in self.registry.list():
                versions.setdefault(version.name, []).append(version.version)
            return {"generation": self.registry.generation(), "models": [
                {"name": name, "versions": len(numbers), "latest": max(numbers),
                 "aliases": self.registry.aliases(name)} for name, numbers in versions.items()]}

        return {"registry": await asyncio.to_thread(registry_summary),
                "loaded": [{"ref": s.ref, "bytes": s.loaded_bytes, "active": s.active, "queued": s.queued}
                           for s in self.models.stats()],
                "providers": [{"name": p.name, "state": p.state, "reason": p.reason} for p in self.models.providers()]}

    async def process_startup(self, scope, event):
        self.tasks = [asyncio.create_task(source.run(), name=type(source).__name__) for source in self.sources]

    async def process_shutdown(self, scope, event):
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.hub.stop()
