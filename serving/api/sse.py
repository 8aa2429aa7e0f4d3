"""A generation as server-sent events: the renderer's chunks, a keep-alive comment while nothing happens, an error
frame if the engine fails, the usage chunk, then `[DONE]`.

Falcon notices a client's disconnect only when it sends an event, so a request still waiting in the queue sends an
SSE comment every second: clients ignore it, and a client that has gone frees its place at once.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from falcon.asgi import SSEvent

from serving.api.render.openai import Renderer, Usage, UsageListener
from serving.inference.handle import EventStream
from serving.inference.types import DoneEvent

HEARTBEAT_S = 1.0


async def sse_events(stream: EventStream, renderer: Renderer, n: int, close: Callable[[], Awaitable[None]],
                     on_usage: UsageListener | None = None) -> AsyncIterator[SSEvent]:
    """Frames for `n` sequences; `close` (cancel what still runs, return the lease) and `on_usage` (the tokens
    counted so far) run however the stream ends."""
    usage = Usage(stream.prompt_tokens)
    try:
        for opening in renderer.opening(n):
            yield SSEvent(json=opening)
        async for event in stream.events(heartbeat_s=HEARTBEAT_S):
            if event is None:
                yield SSEvent(comment="keep-alive")
                continue
            if isinstance(event, DoneEvent) and event.error:
                yield SSEvent(json={"error": {"message": f"generation failed: {event.error}", "type": "server_error",
                                              "param": None, "code": None}})
                return
            usage.add(event)
            yield SSEvent(json=renderer.chunk(event))
        usage.prompt_tokens = stream.prompt_tokens  # a remote upstream tells it only at the end
        if (closing := renderer.usage_chunk(usage)) is not None:
            yield SSEvent(json=closing)
        yield SSEvent(data=b"[DONE]")
    finally:
        await close()
        usage.prompt_tokens = stream.prompt_tokens
        if on_usage is not None:
            await on_usage(usage)
