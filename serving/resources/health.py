"""GET /health (the process answers) and GET /ready (the registry reads and the default model can load)."""
from __future__ import annotations

import asyncio

import falcon

from serving.pool import ModelPool


class Health:
    async def on_get(self, req, resp):
        resp.media = {"status": "ok"}


class Ready:
    def __init__(self, pool: ModelPool):
        self.pool = pool

    async def on_get(self, req, resp):
        try:
            await asyncio.to_thread(self.pool.registry.generation)
        except Exception as exc:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "reason": f"registry unreadable: {exc}"}
            return
        default = "default" if "default" in self.pool.routes else next(iter(sorted(self.pool.routes)), None)
        if default is None:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "reason": "the registry holds no model yet"}
            return
        try:
            async with self.pool.lease(default) as model:
                resp.media = {"status": "ready", "default_model": default, "version": model.ref}
        except Exception as exc:
            resp.status = falcon.HTTP_503
            resp.media = {"status": "unavailable", "reason": f"{default} cannot be loaded: {exc}"}
