"""POST /v1/chat/completions (and /chat): messages through the model's chat template, streamed or whole."""
from __future__ import annotations

from serving.api.render.openai import ChatRenderer
from serving.api.resources.generation import respond
from serving.api.schemas import read_json
from serving.api.schemas.openai import ChatCompletionRequest
from serving.inference.handle import ModelCatalog


class ChatCompletions:
    def __init__(self, models: ModelCatalog):
        self.models = models

    async def on_post(self, req, resp):
        request: ChatCompletionRequest = await read_json(req, ChatCompletionRequest)
        req.context.model = request.model
        await respond(resp, self.models, request.model, request.generate_request(), ChatRenderer,
                      stream=request.stream, include_usage=request.include_usage)
