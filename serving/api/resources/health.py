"""GET /health (the process answers) and GET /ready (the registry reads and the default model can load)."""
from __future__ import annotations

import falcon

from serving.inference.handle import ModelCatalog
from serving.inference.types import Unavailable


class Health:
    async def on_get(self, req, resp):
        resp.media = {"status": "ok"}


class Ready:
    def __init__(self, models: ModelCatalog):
        self.models = models

    async def on_get(self, req, resp):
        try:
            info = await self.models.probe()
        except Unavailable as exc:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "reason": str(exc)}
            return
        resp.media = {"status": "ready", "default_model": info.id, "version": info.ref}
