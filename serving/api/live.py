"""Per-request generation stats for the live event feed: when a chat or text completion ends (streamed or not,
finished or cut short), one `generation` event with the model, time to first token, decode speed and token counts
(docs/ui-api.md). Falcon middleware; goes after `RequestContext`, which creates `req.context.usage_listeners`."""
from __future__ import annotations

import time

from serving.api.render.openai import Usage
from serving.events.hub import EventHub

GENERATION_PATHS = ("/v1/chat/completions", "/chat", "/v1/completions")


class GenerationEvents:
    def __init__(self, hub: EventHub):
        self.hub = hub

    async def process_request(self, req, resp):
        if req.method != "POST" or req.path not in GENERATION_PATHS:
            return

        async def tell(usage: Usage) -> None:
            now, started = time.perf_counter(), req.context.started
            first = usage.first_token_at
            tokens = usage.completion_tokens
            decode_s = now - first if first is not None else None
            self.hub.publish("generation", model=req.context.get("model"),
                             ttft_s=round(first - started, 4) if first is not None else None,
                             tokens_per_s=round((tokens - 1) / decode_s, 2) if decode_s and tokens > 1 else None,
                             tokens=tokens, prompt_tokens=usage.prompt_tokens)

        req.context.usage_listeners.append(tell)
