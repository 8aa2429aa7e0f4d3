"""Cross-cutting request handling: request ids and access logs, the body-size limit, startup and shutdown."""
from __future__ import annotations

import logging
import time
import uuid

import orjson

from serving.api.errors import BodyTooLarge, error_body
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
    """Request bodies beyond the limit get 413 (uploads to /v1/files have their own limit).

    A declared Content-Length is refused before anything is read (Falcon middleware); a chunked body, or one that
    runs past what it declared, is counted as it arrives (`limit_body`, around the ASGI app) and refused the moment
    it passes the limit, so it is never held whole in memory.
    """

    def __init__(self, max_bytes: int, max_upload_bytes: int):
        self.max_bytes, self.max_upload_bytes = max_bytes, max_upload_bytes

    def limit_for(self, path: str) -> int:
        return self.max_upload_bytes if path == "/v1/files" else self.max_bytes

    async def process_request(self, req, resp):
        limit = self.limit_for(req.path)
        if req.content_length is not None and req.content_length > limit:
            raise BodyTooLarge(req.content_length, limit)

    def around(self, app):
        """`app` with every request body counted as it is received."""
        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            limit, seen = self.limit_for(scope["path"]), 0

            async def receive_within_limit():
                nonlocal seen
                event = await receive()
                seen += len(event.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(None, limit)
                return event

            started = False

            async def send_tracked(message):
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                return await app(scope, receive_within_limit, send_tracked)
            except BodyTooLarge as exc:  # raised before Falcon could route it (its very first read): answer here
                if started:
                    raise
                body = orjson.dumps(error_body(413, str(exc), code="request_too_large"))
                await send({"type": "http.response.start", "status": 413, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})

        return counted


class Lifecycle:
    """Start the model catalog when a worker starts (routes known, hot reload on); stop it when the worker stops."""

    def __init__(self, models):
        self.models = models

    async def process_startup(self, scope, event):
        await self.models.start()

    async def process_shutdown(self, scope, event):
        await self.models.stop()
