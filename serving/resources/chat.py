"""POST /v1/chat/completions (and /chat): messages through the model's chat template, streamed or whole."""
from __future__ import annotations

from contextlib import AsyncExitStack

from serving.pool import ModelPool
from serving.resources.generation import (collect, logprob_entry, now, open_lease, response_id, sampling_params,
                                          sse_stream, submit_all, usage)
from serving.scheduler import TokenEvent
from serving.schemas import ChatCompletionRequest, parse


class ChatCompletions:
    def __init__(self, pool: ModelPool):
        self.pool = pool

    async def on_post(self, req, resp):
        request: ChatCompletionRequest = parse(ChatCompletionRequest, await req.get_media())
        req.context.model = request.model
        stack = AsyncExitStack()
        try:
            model = await open_lease(self.pool, request.model, stack)
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                        for m in request.messages]
            prompt = model.engine.encode(model.engine.render_chat(messages))
            params = sampling_params(request, model, len(prompt), request.max_completion_tokens or request.max_tokens,
                                     logprobs=request.logprobs, top_logprobs=request.top_logprobs or 0)
            generations = submit_all(model, prompt, params)
        except BaseException:
            await stack.aclose()
            raise
        base = {"id": response_id("chatcmpl"), "created": now(), "model": request.model,
                "system_fingerprint": model.ref}
        token_text = model.engine.token_text

        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            chunk_base = {**base, "object": "chat.completion.chunk"}
            extra = {"usage": None} if include_usage else {}

            def first(index):
                return {**chunk_base, **extra, "choices": [
                    {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}]}

            def chunk(index, event):
                if isinstance(event, TokenEvent):
                    logprobs = {"content": [logprob_entry(event, token_text)]} if event.logprob is not None else None
                    return {**chunk_base, **extra, "choices": [
                        {"index": index, "delta": {"content": event.text}, "logprobs": logprobs,
                         "finish_reason": None}]}
                return {**chunk_base, **extra, "choices": [
                    {"index": index, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason}]}

            resp.sse = sse_stream(stack, model, generations, chunk, first,
                                  {**chunk_base, "choices": []} if include_usage else None, len(prompt))
            return

        async with stack:
            choices = await collect(model, generations, token_text)
        resp.media = {**base, "object": "chat.completion", "choices": [
            {"index": c.index, "message": {"role": "assistant", "content": c.text},
             "logprobs": {"content": c.logprobs} if request.logprobs else None, "finish_reason": c.finish_reason}
            for c in choices], "usage": usage(len(prompt), generations)}
