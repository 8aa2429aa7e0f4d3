"""The live event stream of the web UI: WebSocket /v1/events, and POST /v1/events/tickets.

A browser cannot set headers on a WebSocket, and an API key in a URL would land in logs and history. So, once keys
exist, the page first asks for a ticket with its key (an ordinary request, checked by serving/api/auth.py), then
opens the socket with `?ticket=...`. A ticket is random, short-lived and single-use, and kept (as a hash) in the
shared event log, so it is redeemed on whichever worker the socket lands. A refused socket is accepted and closed
at once with 4401 (no, unknown, expired or used ticket) or 4403 (its key was revoked since), with the reason: a
refusal before accepting would reach the page as a bare failed handshake.
"""
from __future__ import annotations

import asyncio
import contextlib

import falcon

from factory.keys import KeyStore
from serving.events.hub import EventHub

TICKET_TTL_S = 30
SNAPSHOT_S = 30.0


class EventTickets:
    def __init__(self, hub: EventHub):
        self.hub = hub

    async def on_post(self, req, resp):
        key = req.context.get("key")
        ticket = await asyncio.to_thread(self.hub.log.issue_ticket, key.name if key else None, TICKET_TTL_S)
        resp.media = {"ticket": ticket, "expires_in": TICKET_TTL_S}


class EventsSocket:
    def __init__(self, hub: EventHub, keys: KeyStore, mode: str):
        self.hub, self.keys, self.mode = hub, keys, mode

    async def _refusal(self, ticket: str | None) -> tuple[int, str] | None:
        if self.mode == "required_if_any" and not await asyncio.to_thread(self.keys.any) and not ticket:
            return None  # no keys, no ticket needed
        if not ticket:
            return 4401, "a ticket is required: POST /v1/events/tickets with your API key, then ?ticket=..."
        valid, key_name = await asyncio.to_thread(self.hub.log.redeem_ticket, ticket)
        if not valid:
            return 4401, "unknown, expired or already used ticket"
        if key_name is not None:
            key = await asyncio.to_thread(self.keys.get, key_name)
            if key is None or key.revoked is not None:
                return 4403, "the key this ticket was issued for has been revoked"
        return None

    async def on_websocket(self, req, ws):
        refusal = await self._refusal(req.get_param("ticket"))
        await ws.accept()
        if refusal is not None:
            await ws.close(*refusal)
            return
        try:
            after = req.get_param_as_int("after", min_value=0)
        except falcon.HTTPBadRequest:  # a malformed resume point: start from now
            after = None
        loop = asyncio.get_running_loop()
        async with self.hub.subscribe() as queue:
            sent = after or 0  # the newest event id sent: the backlog and the live queue may overlap
            await ws.send_media(await self.hub.snapshot())
            if after is not None:
                for event in await self.hub.backlog(after):
                    await ws.send_media(event)
                    sent = event["id"]
            reader = asyncio.create_task(_drain(ws))  # ends when the client goes away
            next_snapshot = loop.time() + SNAPSHOT_S
            try:
                while not reader.done():
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, reader}, timeout=max(0.0, next_snapshot - loop.time()),
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        event = getter.result()
                        if event["id"] > sent:
                            await ws.send_media(event)
                            sent = event["id"]
                    else:
                        getter.cancel()
                    if loop.time() >= next_snapshot:
                        await ws.send_media(await self.hub.snapshot())
                        next_snapshot += SNAPSHOT_S
            except falcon.WebSocketDisconnected:
                pass
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, falcon.WebSocketDisconnected):
                    await reader


async def _drain(ws) -> None:
    """Read (and ignore) what the client sends, until it disconnects."""
    with contextlib.suppress(falcon.WebSocketDisconnected):
        while True:
            with contextlib.suppress(falcon.PayloadTypeError):  # binary frames: ignored as well
                await ws.receive_text()
