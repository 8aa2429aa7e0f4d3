"""Loaded models of one worker: resolve a model id to a registry version, load it on first use, keep it under a
memory budget (LRU) and an idle TTL, and swap versions without dropping a request.

Model ids: `name` (its current version: `latest`), `name@N`, `name@alias`, or a serving alias from the spec's
`serve.aliases` (e.g. `default`). Requests hold a lease on the version they started with, so a stream begun before
a swap finishes on the old version, which is unloaded once its last lease is returned.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from factory.registry import NotFound, Registry, RegistryError, Version
from serving.config import ServerConfig
from serving.engines import NoEngine, select_artifact
from serving.engines.base import Engine
from serving.scheduler import Scheduler

log = logging.getLogger("factory.serving")


@dataclass
class ServedModel:
    version: Version
    serve: dict[str, Any]
    artifact: str
    engine: Engine
    scheduler: Scheduler
    nbytes: int
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False

    @property
    def ref(self) -> str:
        return self.version.ref

    @property
    def context_length(self) -> int:
        return int(self.serve.get("context_length") or 4096)

    def unload(self) -> None:
        self.scheduler.stop()
        self.engine.close()
        log.info("unloaded %s", self.ref)


class UnknownModel(Exception):
    pass


class ModelPool:
    def __init__(self, registry: Registry, config: ServerConfig):
        self.registry = registry
        self.config = config
        self.loaded: dict[str, ServedModel] = {}  # ref -> model
        self.loading: dict[str, asyncio.Task] = {}
        self.routes: dict[str, str] = {}  # bare name or serving alias -> ref of its current version
        self.manifests: dict[str, dict[str, Any]] = {}  # ref -> manifest (immutable, so cached)
        self.generation = -1

    # ------------------------------------------------------------ routing

    async def refresh(self) -> bool:
        """Re-read the registry if it changed; preload new versions of loaded models, then switch routes."""
        generation = await asyncio.to_thread(self.registry.generation)
        if generation == self.generation:
            return False
        versions = await asyncio.to_thread(self.registry.list)
        latest: dict[str, Version] = {}
        for version in versions:
            latest[version.name] = version  # list() is ordered by version
        routes = {name: version.ref for name, version in latest.items()}
        for name, version in latest.items():
            for alias in (await self._manifest(version)).get("serve", {}).get("aliases", []):
                routes.setdefault(alias, version.ref)
        # Load the new version of anything in use *before* routing to it, so no request waits on the swap.
        in_use = {ref.partition("@")[0] for ref in self.loaded}
        for name, ref in routes.items():
            if name in latest and name in in_use and ref not in self.loaded:
                try:
                    await self._load(latest[name])
                except Exception:
                    log.exception("preloading %s failed; it will load on first use", ref)
        previous, self.routes, self.generation = self.routes, routes, generation
        for name, old_ref in previous.items():
            if routes.get(name) != old_ref and old_ref in self.loaded and old_ref not in routes.values():
                self._retire(self.loaded[old_ref])
        return True

    async def resolve(self, model_id: str) -> Version:
        if "@" not in model_id and model_id in self.routes:
            name, _, number = self.routes[model_id].partition("@")
            return await asyncio.to_thread(self.registry.get, name, int(number))
        try:
            return await asyncio.to_thread(self.registry.resolve, model_id)
        except (NotFound, RegistryError, ValueError) as exc:
            raise UnknownModel(str(exc)) from None

    async def describe(self, version: Version) -> dict[str, Any]:
        return await self._manifest(version)

    # ------------------------------------------------------------ leases

    @asynccontextmanager
    async def lease(self, model_id: str):
        """The served model for `model_id`, loaded if needed, kept loaded until the block ends."""
        version = await self.resolve(model_id)
        model = self.loaded.get(version.ref) or await self._load(version)
        model.leases += 1
        model.last_used = time.monotonic()
        try:
            yield model
        finally:
            model.leases -= 1
            model.last_used = time.monotonic()
            if model.retired and model.leases == 0:
                self._unload(model)

    async def _load(self, version: Version) -> ServedModel:
        if version.ref in self.loaded:
            return self.loaded[version.ref]
        task = self.loading.get(version.ref)
        if task is None:
            task = asyncio.ensure_future(self._load_now(version))
            self.loading[version.ref] = task
            task.add_done_callback(lambda _: self.loading.pop(version.ref, None))
        return await asyncio.shield(task)

    async def _load_now(self, version: Version) -> ServedModel:
        manifest = await self._manifest(version)
        serve = manifest.get("serve", {})
        try:
            engine_class, artifact = select_artifact(version, serve.get("engine", "auto"))
        except NoEngine as exc:
            raise UnknownModel(str(exc)) from None
        started = time.monotonic()
        engine = await asyncio.to_thread(engine_class.load, version.artifact(artifact), self.config.max_batch,
                                         int(serve.get("context_length") or 4096))
        nbytes = sum(entry["size"] for entry in manifest["artifacts"][artifact]["files"].values())
        model = ServedModel(version=version, serve=serve, artifact=artifact, engine=engine, nbytes=nbytes,
                            scheduler=Scheduler(engine, self.config.max_batch, self.config.queue_size, version.ref))
        self.loaded[version.ref] = model
        log.info("loaded %s (%s, %.1f MB) in %.2fs", version.ref, artifact, nbytes / 1e6, time.monotonic() - started)
        self.evict(keep=model)
        return model

    async def _manifest(self, version: Version) -> dict[str, Any]:
        if version.ref not in self.manifests:
            self.manifests[version.ref] = await asyncio.to_thread(version.manifest)
        return self.manifests[version.ref]

    # ------------------------------------------------------------ memory

    def evict(self, keep: ServedModel | None = None) -> None:
        """Unload idle models past their TTL, then least-recently-used ones until the budget holds."""
        now = time.monotonic()
        for model in list(self.loaded.values()):
            if model is not keep and model.leases == 0 and now - model.last_used > self.config.idle_ttl_s:
                self._unload(model)
        budget = self.config.memory_budget_mb * 1e6
        for model in sorted(self.loaded.values(), key=lambda m: m.last_used):
            if sum(m.nbytes for m in self.loaded.values()) <= budget:
                break
            if model is not keep and model.leases == 0:
                self._unload(model)

    def _retire(self, model: ServedModel) -> None:
        model.retired = True
        if model.leases == 0:
            self._unload(model)

    def _unload(self, model: ServedModel) -> None:
        if self.loaded.pop(model.ref, None) is not None:
            model.unload()

    def close(self) -> None:
        for model in list(self.loaded.values()):
            self._unload(model)
