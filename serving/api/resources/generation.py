"""The one generation skeleton that chat and text completions share: parse the body, lease the model, start the
request, then stream it as server-sent events or collect it into one response. Endpoints differ only in their
request schema and renderer:

    POST /v1/chat/completions (and /chat)   ChatCompletionRequest → ChatRenderer (messages through the template)
    POST /v1/completions                    CompletionRequest → CompletionRenderer (a raw prompt)
"""
from __future__ import annotations

from contextlib import AsyncExitStack

from serving.api.render.openai import Choice, Renderer, Usage, UsageListener
from serving.api.schemas import read_json
from serving.api.schemas.openai import GenerationRequest
from serving.api.sse import sse_events
from serving.inference.handle import EventStream, ModelCatalog, StreamCache
from serving.inference.types import DoneEvent, GenerateRequest, GenerationFailed


class GenerationEndpoint:
    def __init__(self, models: ModelCatalog, schema: type[GenerationRequest], renderer: type[Renderer],
                 cache: StreamCache | None = None):
        self.models, self.schema, self.renderer, self.cache = models, schema, renderer, cache

    async def on_post(self, req, resp):
        request = await read_json(req, self.schema)
        req.context.model = request.model
        await respond(resp, self.models, request.model, request.generate_request(), self.renderer,
                      stream=request.stream, include_usage=request.include_usage,
                      on_usage=tell_listeners(req.context.get("usage_listeners") or []),
                      cache=self.cache, cache_scope=req.context.get("key_name") or "")


def tell_listeners(listeners: list[UsageListener]) -> UsageListener:
    """One listener for all that middleware registered on `req.context.usage_listeners` (rate limits, metrics)."""
    async def tell(usage: Usage) -> None:
        for listener in listeners:
            await listener(usage)
    return tell


async def respond(resp, models: ModelCatalog, model_id: str, request: GenerateRequest, renderer_class: type[Renderer],
                  *, stream: bool, include_usage: bool, on_usage: UsageListener | None = None,
                  cache: StreamCache | None = None, cache_scope: str = "") -> None:
    """`on_usage` hears the token counts once the generation ends, however it ends (what middleware counts: rate
    limits, metrics). With a `cache`, a deterministic request may be answered from it (header x-cache: hit|miss);
    `cache_scope` keeps callers' entries apart (the API key's name)."""
    stack = AsyncExitStack()
    try:
        handle = await stack.enter_async_context(models.lease(model_id))
        events = await (cache.stream(handle, request, cache_scope) if cache else handle.stream(request))
        stack.push_async_callback(events.aclose)  # runs first: cancel what still runs, then return the lease
    except BaseException:
        await stack.aclose()
        raise
    if getattr(events, "cache", None):  # only deterministic requests are considered (serving/inference/cache.py)
        resp.set_header("x-cache", events.cache)
    renderer = renderer_class(model_id, events.ref, logprobs=request.sampling.logprobs, include_usage=include_usage)
    if stream:
        resp.sse = sse_events(events, renderer, request.n, stack.aclose, on_usage)
        return
    async with stack:
        choices, usage = await collect(events, request.n)
    if on_usage is not None:
        await on_usage(usage)
    resp.media = renderer.whole(choices, usage)


async def collect(events: EventStream, n: int) -> tuple[list[Choice], Usage]:
    """Every sequence, whole: one Choice each, and the token counts."""
    choices, usage = [Choice(index=i) for i in range(n)], Usage(events.prompt_tokens)
    async for event in events.events():
        if isinstance(event, DoneEvent) and event.error:
            raise GenerationFailed(event.error)
        choices[event.index].add(event)
        usage.add(event)
    usage.prompt_tokens = events.prompt_tokens  # a remote upstream tells it only at the end
    return choices, usage
