"""Cross-cutting request handling: request ids and access logs, the body-size limit, startup and shutdown."""
from __future__ import annotations

import logging
import time
import uuid

from serving.api.errors import BodyTooLarge
from serving.logs import request_id

log = logging.getLogger("factory.serving.access")


class RequestContext:
    """Give every request an id (the client's X-Request-Id, or a new one) and log one JSON line per request."""

    async def process_request(self, req, resp):
        req.context.request_id = req.get_header("X-Request-Id") or uuid.uuid4().hex
        req.context.started = time.perf_counter()
        req.context.usage_listeners = []  # middleware that counts tokens adds itself (see resources.generation)
        request_id.set(req.context.request_id)
        resp.set_header("X-Request-Id", req.context.request_id)

    async def process_response(self, req, resp, resource, req_succeeded):
        elapsed_ms = (time.perf_counter() - req.context.get("started", time.perf_counter())) * 1000
        log.info("%s %s %s", req.method, req.path, resp.status_code, extra={"fields": {
            "method": req.method, "path": req.path, "status": resp.status_code,
            "duration_ms": round(elapsed_ms, 1), "model": req.context.get("model")}})


class BodyLimit:
    """Request bodies beyond the limit get 413 (uploads to /v1/files and /v1/admin/uploads have their own limit).

    A declared Content-Length is refused here, before anything is read; a chunked body, or one that runs past what
    it declared, is counted as it arrives (serving.api.transport) and refused the moment it passes the limit.
    """

    def __init__(self, max_bytes: int, max_upload_bytes: int):
        self.max_bytes, self.max_upload_bytes = max_bytes, max_upload_bytes

    @staticmethod
    def is_upload(path: str) -> bool:
        return path in ("/v1/files", "/v1/admin/uploads")

    def limit_for(self, path: str) -> int:
        return self.max_upload_bytes if self.is_upload(path) else self.max_bytes

    async def process_request(self, req, resp):
        limit = self.limit_for(req.path)
        if req.content_length is not None and req.content_length > limit:
            raise BodyTooLarge(req.content_length, limit)


class Lifecycle:
    """Start the model catalog when a worker starts (routes known, hot reload on); stop it when the worker stops."""

    def __init__(self, models):
        self.models = models

    async def process_startup(self, scope, event):
        await self.models.start()

    async def process_shutdown(self, scope, event):
        await self.models.stop()
