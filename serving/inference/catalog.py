"""The server's `ModelCatalog`: the local models (the registry's pool) and every configured provider's models
behind one set of ids. An id containing "/" whose prefix names a provider (`ollama/llama3.2`) goes to that provider;
every other id is the local pool's, which stays unaware of providers."""
from __future__ import annotations

from contextlib import asynccontextmanager

from serving.inference.handle import ModelCatalog, ProviderListener
from serving.inference.providers import Provider, ProviderSet
from serving.inference.remote import RemoteModel
from serving.inference.types import ModelInfo, ModelStats, ProviderStatus


class Catalog:
    def __init__(self, local: ModelCatalog, providers: ProviderSet):
        self.local, self.provider_set = local, providers

    def _routed(self, model_id: str) -> tuple[Provider, str] | None:
        name, slash, model = model_id.partition("/")
        provider = self.provider_set.get(name) if slash and model else None
        return (provider, model) if provider is not None else None

    def ids(self) -> list[str]:
        return [*self.local.ids(), *self.provider_set.ids()]

    async def describe(self, model_id: str) -> ModelInfo:
        if routed := self._routed(model_id):
            provider, model = routed
            return provider.describe(model)
        return await self.local.describe(model_id)

    @asynccontextmanager
    async def lease(self, model_id: str):
        if routed := self._routed(model_id):
            provider, model = routed
            provider.usable(model)  # fail fast: not configured, unhealthy, unknown
            yield RemoteModel(provider, model)
            return
        async with self.local.lease(model_id) as handle:
            yield handle

    async def probe(self) -> ModelInfo:
        return await self.local.probe()  # readiness is about this server's own default model

    def stats(self) -> list[ModelStats]:
        return self.local.stats()

    def providers(self) -> list[ProviderStatus]:
        return self.provider_set.statuses()

    def subscribe_providers(self, listener: ProviderListener) -> None:
        self.provider_set.listeners.append(listener)

    async def start(self) -> None:
        await self.local.start()
        await self.provider_set.start()

    async def stop(self) -> None:
        await self.provider_set.stop()
        await self.local.stop()
