"""Anthropic's Messages API on the one generation path (errors on these routes take Anthropic's shape:
serving/api/errors.py chooses it by path):

    POST /v1/messages               CreateMessage → GenerateRequest → the model's events → MessageBuilder
    POST /v1/messages/count_tokens  {"input_tokens": N}, through the model's own template and tokenizer

The `anthropic-version` header is accepted whatever it says: there is one version of this API here.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from falcon.asgi import SSEvent

from serving.api.render.anthropic import Frame, MessageBuilder, error_frame, ping
from serving.api.render.openai import Usage, UsageListener
from serving.api.resources.generation import tell_listeners
from serving.api.schemas import read_json
from serving.api.schemas.anthropic import CountTokens, CreateMessage
from serving.api.sse import HEARTBEAT_S
from serving.inference.handle import EventStream, ModelCatalog, StreamCache
from serving.inference.types import DoneEvent, GenerationFailed


class Messages:
    def __init__(self, models: ModelCatalog, cache: StreamCache | None = None):
        self.models, self.cache = models, cache

    async def on_post(self, req, resp):
        request = await read_json(req, CreateMessage)
        req.context.model = request.model
        generate = request.generate_request()
        stack = AsyncExitStack()
        try:
            handle = await stack.enter_async_context(self.models.lease(request.model))
            scope = req.context.get("key_name") or ""
            events = await (self.cache.stream(handle, generate, scope) if self.cache else handle.stream(generate))
            stack.push_async_callback(events.aclose)  # runs first: cancel what still runs, then return the lease
        except BaseException:
            await stack.aclose()
            raise
        if getattr(events, "cache", None):  # only deterministic requests are considered
            resp.set_header("x-cache", events.cache)
        builder = MessageBuilder(request.model)
        on_usage = tell_listeners(req.context.get("usage_listeners") or [])
        if request.stream:
            resp.sse = _frames(events, builder, stack.aclose, on_usage)
            return
        async with stack:
            usage = Usage(events.prompt_tokens)
            async for event in events.events():
                if isinstance(event, DoneEvent) and event.error:
                    raise GenerationFailed(event.error)
                usage.add(event)
                builder.feed(event)
            usage.prompt_tokens = events.prompt_tokens  # a remote upstream tells it only at the end
        await on_usage(usage)
        resp.media = builder.message(usage)


class MessageTokens:
    """POST /v1/messages/count_tokens."""

    def __init__(self, models: ModelCatalog):
        self.models = models

    async def on_post(self, req, resp):
        request = await read_json(req, CountTokens)
        req.context.model = request.model
        async with self.models.lease(request.model) as handle:
            resp.media = {"input_tokens": await handle.count_tokens(request.generate_request())}


async def _frames(events: EventStream, builder: MessageBuilder, close,
                  on_usage: UsageListener) -> AsyncIterator[SSEvent]:
    """The stream's server-sent events, each named by its type; `close` and `on_usage` run however it ends."""
    usage = Usage(events.prompt_tokens)

    def sse(frames: list[Frame]) -> list[SSEvent]:
        return [SSEvent(event=name, json=data) for name, data in frames]

    try:
        for frame in sse(builder.start(usage)):
            yield frame
        async for event in events.events(heartbeat_s=HEARTBEAT_S):
            if event is None:  # Anthropic's own keep-alive; lets Falcon notice a client that left while queued
                yield sse([ping()])[0]
                continue
            if isinstance(event, DoneEvent) and event.error:
                yield sse([error_frame(f"generation failed: {event.error}")])[0]
                return
            usage.add(event)
            for frame in sse(builder.feed(event)):
                yield frame
        usage.prompt_tokens = events.prompt_tokens
        for frame in sse(builder.finish(usage)):
            yield frame
    finally:
        await close()
        usage.prompt_tokens = events.prompt_tokens
        await on_usage(usage)
