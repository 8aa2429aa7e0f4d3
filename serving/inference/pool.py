"""Loaded models of one worker: resolve a model id to a registry version, load it on first use, keep it under a
memory budget (LRU) and an idle TTL, and swap versions without dropping a request. The pool is this server's
`ModelCatalog` for local models.

Model ids: `name` (its current version: `latest`), `name@N`, `name@alias`, or a serving alias from the spec's
`serve.aliases` (e.g. `default`). Requests hold a lease on the version they started with, so a stream begun before
a swap finishes on the old version, which is unloaded once its last lease is returned.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from factory.registry import NotFound, Registry, RegistryError, Version
from factory.spec import Serve
from factory.server_config import ModelsConfig
from formats.embeddings.runtime import Embedder, load_embedder
from serving.inference import metrics
from serving.inference.local.describe import model_info
from serving.inference.local.embedding_model import EmbeddingModel
from serving.inference.local.engines.base import Engine
from serving.inference.local.engine_options import engine_options
from serving.inference.local.model import LocalModel
from serving.inference.local.scheduler import Scheduler
from serving.inference.local.select import NoEngine, select_artifact, select_embedding_artifact
from serving.inference.types import ModelInfo, ModelStats, Unavailable, UnknownModel
from serving.inference.watcher import RegistryWatcher

log = logging.getLogger("factory.serving")
DEFAULT = "default"  # the id clients use when they do not care which model answers
EMBED_BATCH = 32  # inputs an embedding model embeds per call, across concurrent requests

# (version, its serving settings, max batch[, its draft model's version]) -> (a loaded engine, the artifact it serves)
EngineLoader = Callable[..., tuple[Engine, str]]
# (event type, its fields): model.loading {ref}, model.loaded {ref, bytes, seconds, artifact}, model.unloaded
# {ref, bytes}; for a live event feed (serving/events)
PoolListener = Callable[..., None]


def load_engine(version: Version, serve: Serve, max_batch: int,
                draft: Version | None = None) -> tuple[Engine | Embedder, str]:
    """The engine this host runs best for `version`, loaded from the matching artifact (an embedding model's:
    its runtime, batches of EMBED_BATCH inputs); `draft`: the version `serve.draft` names."""
    if version.manifest().get("task") == "embedding":
        try:
            _, artifact = select_embedding_artifact(version, serve.engine)
        except NoEngine as exc:
            raise UnknownModel(version.ref, str(exc)) from None
        return load_embedder(version.artifact(artifact), EMBED_BATCH), artifact
    try:
        engine_class, artifact = select_artifact(version, serve.engine)
    except NoEngine as exc:
        raise UnknownModel(version.ref, str(exc)) from None
    options = engine_options(serve, engine_class, draft)
    return engine_class.load(version.artifact(artifact), max_batch, serve.context_length, options), artifact


class ModelPool:
    def __init__(self, registry: Registry, config: ModelsConfig, engine_loader: EngineLoader = load_engine):
        self.registry = registry
        self.config = config
        self.engine_loader = engine_loader
        self.loaded: dict[str, LocalModel] = {}  # ref -> model
        self.loading: dict[str, asyncio.Task] = {}
        self.routes: dict[str, str] = {}  # bare name or serving alias -> ref of its current version
        self.manifests: dict[str, dict[str, Any]] = {}  # ref -> manifest (immutable, so cached)
        self.serves: dict[str, Serve] = {}  # ref -> its manifest's serving settings
        self.listed: list[str] = []  # what /v1/models shows
        self.generation = -1
        self.watcher = RegistryWatcher(self, config.poll_s)
        self.listeners: list[PoolListener] = []

    def _tell(self, type_: str, **fields: Any) -> None:
        for listener in list(self.listeners):
            try:
                listener(type_, **fields)
            except Exception:  # a listener's bug must not fail a load
                log.exception("pool listener failed")

    async def start(self) -> None:
        await self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        await asyncio.to_thread(self.close)  # joining engine threads must not block the event loop

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
            for alias in (await self._serve(version)).aliases:
                routes.setdefault(alias, version.ref)
        if (chosen := self.config.default) in latest:  # the server's choice wins over specs' aliases
            routes[DEFAULT] = latest[chosen].ref
        # Load the new version of anything in use *before* routing to it, so no request waits on the swap.
        in_use = {ref.partition("@")[0] for ref in self.loaded}
        for name, ref in routes.items():
            if name in latest and name in in_use and ref not in self.loaded:
                try:
                    await self._load(latest[name])
                except Exception:
                    log.exception("preloading %s failed; it will load on first use", ref)
        # Fine-tuned versions are listed by their own immutable id (`name@N`, what their job reports), beside the
        # moving names and aliases.
        fine_tuned = [v.ref for v in versions if (await self._manifest(v)).get("lineage", {}).get("base")]
        previous, self.routes, self.generation = self.routes, routes, generation
        self.listed = sorted({*routes, *fine_tuned})
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
            raise UnknownModel(model_id, str(exc)) from None

    def ids(self) -> list[str]:
        return self.listed

    async def describe(self, model_id: str) -> ModelInfo:
        version = await self.resolve(model_id)
        aliases = [f"{version.name}@{alias}" for alias in version.aliases]
        aliases += [alias for alias, ref in self.routes.items() if ref == version.ref and alias != version.name]
        # off the loop: the first description of a version reads its artifact's tokenizer (capabilities)
        info = await asyncio.to_thread(model_info, model_id, version, await self._serve(version), aliases,
                                       loaded=version.ref in self.loaded,
                                       embedding=(await self._manifest(version)).get("embedding"))
        if base := (await self._manifest(version)).get("lineage", {}).get("base"):
            info.extra["parent"] = base  # a fine-tune names its base, as vLLM does for adapters
        if info.loaded:  # the engine actually running it
            info.engine = self.loaded[version.ref].engine.name
        return info

    async def probe(self) -> ModelInfo:
        try:
            await asyncio.to_thread(self.registry.generation)
        except Exception as exc:
            raise Unavailable(f"registry unreadable: {exc}") from None
        default = DEFAULT if DEFAULT in self.routes else next(iter(sorted(self.routes)), None)
        if default is None:
            raise Unavailable("the registry holds no model yet")
        try:
            async with self.lease(default):
                return await self.describe(default)
        except Exception as exc:
            raise Unavailable(f"{default} cannot be loaded: {exc}") from None

    def stats(self) -> list[ModelStats]:
        return [ModelStats(ref=ref, loaded_bytes=model.nbytes, active=model.scheduler.decoding,
                           queued=model.scheduler.waiting, generated_tokens=model.scheduler.tokens,
                           decode_steps=model.scheduler.steps) for ref, model in list(self.loaded.items())]

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

    async def _load(self, version: Version) -> LocalModel:
        if version.ref in self.loaded:
            return self.loaded[version.ref]
        task = self.loading.get(version.ref)
        if task is None:
            task = asyncio.ensure_future(self._load_now(version))
            self.loading[version.ref] = task
            task.add_done_callback(lambda _: self.loading.pop(version.ref, None))
        return await asyncio.shield(task)

    async def _load_now(self, version: Version) -> LocalModel:
        manifest = await self._manifest(version)
        serve = await self._serve(version)
        started = time.monotonic()
        self._tell("model.loading", ref=version.ref)
        draft = [await self._draft(version, serve)] if serve.draft else []
        engine, artifact = await asyncio.to_thread(self.engine_loader, version, serve, self.config.max_batch, *draft)
        nbytes = sum(entry["size"] for entry in manifest["artifacts"][artifact]["files"].values())
        if isinstance(engine, Embedder):  # an embedding model: batches of inputs, no generation
            model = EmbeddingModel.around(engine, version, serve, artifact, nbytes, manifest["embedding"],
                                          self.config.queue_size)
        else:
            model = LocalModel(version=version, serve=serve, artifact=artifact, engine=engine, nbytes=nbytes,
                               scheduler=Scheduler(engine, self.config.max_batch, self.config.queue_size, version.ref))
        self.loaded[version.ref] = model
        metrics.model_loaded(version.ref, nbytes)
        seconds = time.monotonic() - started
        log.info("loaded %s (%s, %.1f MB) in %.2fs", version.ref, artifact, nbytes / 1e6, seconds)
        self._tell("model.loaded", ref=version.ref, bytes=nbytes, seconds=round(seconds, 3), artifact=artifact)
        self.evict(keep=model)
        return model

    async def _draft(self, version: Version, serve: Serve) -> Version:
        """The version `serve.draft` names, resolved once, when the model loads."""
        try:
            return await self.resolve(serve.draft)
        except UnknownModel:
            raise Unavailable(f"{version.ref} cannot load: its draft model {serve.draft!r} (serve.draft) is not in "
                              "the registry") from None

    async def _manifest(self, version: Version) -> dict[str, Any]:
        if version.ref not in self.manifests:
            self.manifests[version.ref] = await asyncio.to_thread(version.manifest)
        return self.manifests[version.ref]

    async def _serve(self, version: Version) -> Serve:
        """The version's serving settings, the spec's defaults filled in (one source for context length & co)."""
        if version.ref not in self.serves:
            self.serves[version.ref] = Serve.model_validate((await self._manifest(version)).get("serve") or {})
        return self.serves[version.ref]

    # ------------------------------------------------------------ memory

    def evict(self, keep: LocalModel | None = None) -> None:
        """Unload idle models past their TTL, then least-recently-used ones until the budget holds."""
        now = time.monotonic()
        for model in list(self.loaded.values()):
            if model is not keep and model.leases == 0 and now - model.last_used > self.config.idle_ttl_s:
                self._unload(model)
        budget = self.config.memory_mb * 1e6
        for model in sorted(self.loaded.values(), key=lambda m: m.last_used):
            if sum(m.nbytes for m in self.loaded.values()) <= budget:
                break
            if model is not keep and model.leases == 0:
                self._unload(model)

    def _retire(self, model: LocalModel) -> None:
        model.retired = True
        if model.leases == 0:
            self._unload(model)

    def _unload(self, model: LocalModel) -> None:
        if self.loaded.pop(model.ref, None) is None:
            return
        metrics.model_unloaded(model.ref, model.nbytes)
        self._tell("model.unloaded", ref=model.ref, bytes=model.nbytes)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            model.unload()
        else:  # joining the engine thread can take a decode step: never on the event loop
            loop.run_in_executor(None, model.unload)

    def close(self) -> None:
        for model in list(self.loaded.values()):
            if self.loaded.pop(model.ref, None) is not None:
                metrics.model_unloaded(model.ref, model.nbytes)
                model.unload()
