"""What feeds the event log from outside a request: the registry (published, promoted, rolled back) and the
build and fine-tune jobs on Prefect (their progress). Every worker watches; the log keeps one copy of each
change by its dedupe key (a version's ref, an alias move's sequence number, a job's status and step), so a
change is told once however many workers saw it.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from factory.registry import Registry
from serving.events.hub import EventHub
from serving.jobs import FineTuneJobs

log = logging.getLogger("factory.serving.events")
JOBS_S = 3.0  # how often a worker with listeners asks Prefect about jobs


class RegistryEvents:
    """Diff the registry each time its generation counter moves."""

    def __init__(self, registry: Registry, hub: EventHub, interval_s: float):
        self.registry, self.hub, self.interval_s = registry, hub, interval_s
        self.generation = -1
        self.versions: set[str] = set()
        self.moves: dict[int, tuple[str, str, int]] = {}  # seq -> (name, alias, version)

    async def run(self) -> None:
        first = True
        while True:
            try:
                await self.poll(tell=not first)
                first = False
            except Exception:  # keep watching: one unreadable moment must not end the feed
                log.exception("reading the registry for events failed")
            await asyncio.sleep(self.interval_s)

    async def poll(self, tell: bool = True) -> None:
        generation = await asyncio.to_thread(self.registry.generation)
        if generation == self.generation:
            return
        versions = await asyncio.to_thread(self.registry.list)
        moves = {seq: (name, alias, version) for seq, name, alias, version, _ in
                 await asyncio.to_thread(self.registry.alias_moves)}
        if tell:
            for version in versions:
                if version.ref not in self.versions:
                    await self.hub.append("registry.published", dedupe=f"published:{version.ref}", model=version.name,
                                          version=version.version, ref=version.ref, formats=version.formats)
            current = _current(moves)
            for seq in sorted(set(moves) - set(self.moves)):
                name, alias, version = moves[seq]
                if alias == "latest":  # moves with every publish: the published event says it
                    continue
                before = _current({s: m for s, m in moves.items() if s < seq}).get((name, alias))
                await self.hub.append("registry.promoted", dedupe=f"alias-move:{seq}", model=name, alias=alias,
                                      version=version, ref=f"{name}@{version}", previous=before)
            for seq in sorted(set(self.moves) - set(moves), reverse=True):
                name, alias, version = self.moves[seq]
                now = current.get((name, alias))
                await self.hub.append("registry.rolled_back", dedupe=f"rollback:{seq}", model=name, alias=alias,
                                      version=now, ref=f"{name}@{now}" if now else None, previous=version)
        self.generation, self.versions, self.moves = generation, {v.ref for v in versions}, moves


def _current(moves: dict[int, tuple[str, str, int]]) -> dict[tuple[str, str], int]:
    """(name, alias) -> version, from the latest move of each."""
    current: dict[tuple[str, str], int] = {}
    for seq in sorted(moves):
        name, alias, version = moves[seq]
        current[(name, alias)] = version
    return current


class JobEvents:
    """While this worker has listeners: the progress of recent fine-tunes and builds (status, step, loss)."""

    def __init__(self, hub: EventHub, fine_tunes: FineTuneJobs, builds: Any):
        self.hub, self.fine_tunes, self.builds = hub, fine_tunes, builds

    async def run(self) -> None:
        while True:
            await asyncio.sleep(JOBS_S)
            # Without PREFECT_API_URL Prefect's client would start a temporary server inside this worker (seconds,
            # a database of its own): job progress needs the Prefect server that `factory up` starts.
            if not self.hub.subscribers or not os.environ.get("PREFECT_API_URL"):
                continue
            try:
                await self.poll()
            except Exception as exc:  # Prefect down: nothing to tell, try again later
                log.debug("job progress unavailable: %s", exc)

    async def poll(self) -> None:
        jobs, _ = await self.fine_tunes.list(5)
        for job in jobs:
            step = loss = total = None
            if job.status == "running":
                for event in await self.fine_tunes.events(job.id, 20):  # newest first
                    if event.data and "step" in event.data:
                        step, total = event.data["step"], event.data.get("total_steps")
                        loss = event.data.get("train_loss", event.data.get("valid_loss"))
                        break
            await self.hub.append("job.progress", dedupe=f"job:{job.id}:{job.status}:{step}", kind="fine-tune",
                                  job_id=job.id, status=job.status, step=step, total_steps=total, loss=loss,
                                  model=job.fine_tuned_model)
        builds, _ = await self.builds.list(5)
        for build in builds:
            await self.hub.append("job.progress", dedupe=f"job:{build.id}:{build.status}", kind="build",
                                  job_id=build.id, status=build.status, step=None, total_steps=None, loss=None,
                                  model=None, spec=build.spec)
