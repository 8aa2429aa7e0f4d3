"""Beneath Falcon, at the ASGI level: what a client does with the connection itself.

- A request body is counted as it arrives and refused (413) the moment it passes the limit, chunked or not, so it
  is never held whole in memory (BodyLimit refuses a declared Content-Length earlier, as Falcon middleware).
- A body that has not finished arriving `read_timeout_s` after the request began gets 408: a client that sends
  slowly, or stops, cannot hold a worker's connection and memory (slowloris). Uploads to /v1/files may take
  longer in all (hundreds of MB on a slow link): for them the timeout is between two pieces of the body.
- A response the client does not read: each send waits at most `send_timeout_s` for the client to make room (the
  server's socket buffers are full). Then the connection is closed, which stops the generation behind it, as a
  disconnect does: a stalled reader cannot keep a place in the decode batch.
"""
from __future__ import annotations

import asyncio
import logging

import orjson

from serving.api.errors import BodyTimeout, BodyTooLarge, error_body_for
from serving.api.middleware import BodyLimit

log = logging.getLogger("factory.serving.transport")


class ClientTooSlow(Exception):
    pass


class GuardedTransport:
    """`app` with every request body counted and timed, and every response send timed."""

    def __init__(self, app, body_limit: BodyLimit, read_timeout_s: float, send_timeout_s: float):
        self.app, self.body_limit = app, body_limit
        self.read_timeout_s, self.send_timeout_s = read_timeout_s, send_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, seen, body_done = self.body_limit.limit_for(scope["path"]), 0, False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        upload = self.body_limit.is_upload(scope["path"])
        started = False

        async def guarded_receive():
            nonlocal seen, body_done
            if body_done:  # later reads only wait for a disconnect: no deadline on those
                return await receive()
            try:
                event = await asyncio.wait_for(receive(), self.read_timeout_s if upload else deadline - loop.time())
            except TimeoutError:
                raise BodyTimeout(self.read_timeout_s) from None
            seen += len(event.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(None, limit)
            body_done = event["type"] != "http.request" or not event.get("more_body", False)
            return event

        async def guarded_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            try:
                await asyncio.wait_for(send(message), self.send_timeout_s)
            except TimeoutError:
                raise ClientTooSlow() from None

        try:
            return await self.app(scope, guarded_receive, guarded_send)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised before Falcon could route it (its first read)
            if started:
                raise
            await _answer(send, scope["path"], 413 if isinstance(exc, BodyTooLarge) else 408, str(exc),
                          "request_too_large" if isinstance(exc, BodyTooLarge) else "request_timeout")
        except ClientTooSlow:
            # Returning without finishing the response makes the server close the connection.
            log.warning("closed %s %s: the client read nothing for %g s", scope.get("method"), scope["path"],
                        self.send_timeout_s)


async def _answer(send, path: str, status: int, message: str, code: str) -> None:
    body = orjson.dumps(error_body_for(path, status, message, code=code))
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
