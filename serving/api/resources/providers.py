"""GET /v1/providers: every configured upstream provider with its health (NOT_CONFIGURED, UNHEALTHY with the reason,
HEALTHY), its replicas' last checks and the models it serves, as this worker sees them."""
from __future__ import annotations

from typing import Any

from serving.inference.handle import ModelCatalog
from serving.inference.types import ProviderStatus


class Providers:
    def __init__(self, models: ModelCatalog):
        self.models = models

    async def on_get(self, req, resp):
        resp.media = {"object": "list", "data": [provider_object(status) for status in self.models.providers()]}


def provider_object(status: ProviderStatus) -> dict[str, Any]:
    return {"object": "provider", "name": status.name, "state": status.state, "reason": status.reason,
            "models": [f"{status.name}/{model}" for model in status.models], "changed_at": int(status.changed_at),
            "replicas": [{"url": replica.url, "state": replica.state, "reason": replica.reason,
                          "checked_at": None if replica.checked_at is None else int(replica.checked_at)}
                         for replica in status.replicas]}
