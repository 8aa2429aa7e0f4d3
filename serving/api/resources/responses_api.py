"""OpenAI's Responses API on the one generation path:

    POST   /v1/responses        CreateResponse → GenerateRequest → the model's events → ResponseBuilder
    GET    /v1/responses/{id}   a stored response (404 in OpenAI's shape when unknown, or another key's)
    DELETE /v1/responses/{id}   {id, object: "response", deleted: true}

A response is stored (unless `store: false`) once it has ended, before its last event is sent, so a client that
has seen `response.completed` can continue from it at once. A stream the client leaves early is not stored.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from falcon.asgi import SSEvent

from serving.api.errors import APIError
from serving.api.render.openai import Usage
from serving.api.render.responses_api import Frame, ResponseBuilder, history_output
from serving.api.resources.generation import tell_listeners
from serving.api.schemas import read_json
from serving.api.schemas.responses_api import CreateResponse
from serving.api.sse import HEARTBEAT_S
from serving.api.stored_responses import ResponseStore
from serving.inference.handle import EventStream, ModelCatalog, StreamCache
from serving.inference.types import DoneEvent, GenerationFailed, InvalidRequest

# The inference layer names chat completions' fields in its refusals; these are their names here.
PARAMS = {"messages": "input", "response_format": "text.format", "max_tokens": "max_output_tokens"}


def not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param=param,
                    code="previous_response_not_found" if param else "not_found")


class Responses:
    def __init__(self, models: ModelCatalog, store: ResponseStore, cache: StreamCache | None = None):
        self.models, self.store, self.cache = models, store, cache

    async def on_post(self, req, resp):
        request = await read_json(req, CreateResponse)
        req.context.model = request.model
        owner = req.context.get("key_name") or ""
        history = []
        if request.previous_response_id:
            previous = await asyncio.to_thread(self.store.get, owner, request.previous_response_id)
            if previous is None:
                raise not_found(request.previous_response_id, "previous_response_id")
            history = previous.history + history_output(previous.response["output"])
        items = history + request.input_items()
        generate = request.generate_request(items)
        stack = AsyncExitStack()
        try:
            handle = await stack.enter_async_context(self.models.lease(request.model))
            events = await (self.cache.stream(handle, generate, owner) if self.cache else handle.stream(generate))
            stack.push_async_callback(events.aclose)  # runs first: cancel what still runs, then return the lease
        except InvalidRequest as refused:
            await stack.aclose()
            if refused.param in PARAMS:
                raise InvalidRequest(str(refused).replace(refused.param, PARAMS[refused.param], 1),
                                     PARAMS[refused.param], refused.code) from None
            raise
        except BaseException:
            await stack.aclose()
            raise
        builder = ResponseBuilder(request, request.model)
        on_usage = tell_listeners(req.context.get("usage_listeners") or [])
        save = (lambda: asyncio.to_thread(self.store.save, owner, builder.snapshot(), items)) if request.store \
            else None
        if request.stream:
            resp.sse = _frames(events, builder, stack.aclose, on_usage, save)
            return
        async with stack:
            usage = Usage(events.prompt_tokens)
            done = None
            async for event in events.events():
                if isinstance(event, DoneEvent):
                    if event.error:
                        raise GenerationFailed(event.error)
                    done = event
                usage.add(event)
                builder.feed(event)
            usage.prompt_tokens = events.prompt_tokens  # a remote upstream tells it only at the end
        builder.finish(done, usage)
        await on_usage(usage)
        if save is not None:
            await save()
        resp.media = builder.snapshot()

    async def on_get_one(self, req, resp, response_id: str):
        found = await asyncio.to_thread(self.store.get, req.context.get("key_name") or "", response_id)
        if found is None:
            raise not_found(response_id)
        resp.media = found.response

    async def on_delete_one(self, req, resp, response_id: str):
        if not await asyncio.to_thread(self.store.delete, req.context.get("key_name") or "", response_id):
            raise not_found(response_id)
        resp.media = {"id": response_id, "object": "response", "deleted": True}


async def _frames(events: EventStream, builder: ResponseBuilder, close, on_usage, save) -> AsyncIterator[SSEvent]:
    """The stream's server-sent events, each named by its type; `close` and `on_usage` run however it ends."""
    usage = Usage(events.prompt_tokens)

    def sse(frames: list[Frame]) -> list[SSEvent]:
        return [SSEvent(event=name, json=data) for name, data in frames]

    try:
        for frame in sse(builder.start()):
            yield frame
        async for event in events.events(heartbeat_s=HEARTBEAT_S):
            if event is None:  # lets Falcon notice a client that left while the request waits in the queue
                yield SSEvent(comment="keep-alive")
                continue
            if isinstance(event, DoneEvent):
                if event.error:
                    for frame in sse(builder.failed(f"generation failed: {event.error}")):
                        yield frame
                    return
                usage.add(event)
                usage.prompt_tokens = events.prompt_tokens
                closing = builder.finish(event, usage)
                if save is not None:
                    await save()
                for frame in sse(closing):
                    yield frame
                continue
            usage.add(event)
            for frame in sse(builder.feed(event)):
                yield frame
    finally:
        await close()
        usage.prompt_tokens = events.prompt_tokens
        await on_usage(usage)
