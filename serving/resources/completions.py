"""POST /v1/completions: raw text prompts, no chat template."""
from __future__ import annotations

from contextlib import AsyncExitStack

from serving.errors import invalid
from serving.pool import ModelPool
from serving.resources.generation import (collect, now, open_lease, response_id, sampling_params, sse_stream,
                                          submit_all, usage)
from serving.scheduler import TokenEvent
from serving.schemas import CompletionRequest, parse


class Completions:
    def __init__(self, pool: ModelPool):
        self.pool = pool

    async def on_post(self, req, resp):
        request: CompletionRequest = parse(CompletionRequest, await req.get_media())
        req.context.model = request.model
        if isinstance(request.prompt, list):
            if len(request.prompt) != 1:
                raise invalid("send one prompt per request (use n for several completions)", param="prompt")
            request.prompt = request.prompt[0]
        stack = AsyncExitStack()
        try:
            model = await open_lease(self.pool, request.model, stack)
            prompt = model.engine.encode(request.prompt)
            if not prompt:
                raise invalid("prompt must not be empty", param="prompt")
            top = request.logprobs or 0
            params = sampling_params(request, model, len(prompt), request.max_tokens,
                                     logprobs=request.logprobs is not None, top_logprobs=top)
            generations = submit_all(model, prompt, params)
        except BaseException:
            await stack.aclose()
            raise
        base = {"id": response_id("cmpl"), "object": "text_completion", "created": now(), "model": request.model,
                "system_fingerprint": model.ref}
        token_text = model.engine.token_text

        def logprobs_of(entries):
            return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                    "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                    "text_offset": []}

        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)

            def chunk(index, event):
                if isinstance(event, TokenEvent):
                    return {**base, "choices": [{"index": index, "text": event.text, "logprobs": None,
                                                 "finish_reason": None}]}
                return {**base, "choices": [{"index": index, "text": "", "logprobs": None,
                                             "finish_reason": event.finish_reason}]}

            resp.sse = sse_stream(stack, model, generations, chunk, lambda index: None,
                                  {**base, "choices": []} if include_usage else None, len(prompt))
            return

        async with stack:
            choices = await collect(model, generations, token_text)
        resp.media = {**base, "choices": [
            {"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
             "logprobs": logprobs_of(c.logprobs) if request.logprobs is not None else None} for c in choices],
            "usage": usage(len(prompt), generations)}
