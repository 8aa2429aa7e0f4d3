"""POST /v1/completions: a raw text prompt, no chat template, streamed or whole."""
from __future__ import annotations

from serving.api.render.openai import CompletionRenderer
from serving.api.resources.generation import respond
from serving.api.schemas import read_json
from serving.api.schemas.openai import CompletionRequest
from serving.inference.handle import ModelCatalog


class Completions:
    def __init__(self, models: ModelCatalog):
        self.models = models

    async def on_post(self, req, resp):
        request: CompletionRequest = await read_json(req, CompletionRequest)
        req.context.model = request.model
        await respond(resp, self.models, request.model, request.generate_request(), CompletionRenderer,
                      stream=request.stream, include_usage=request.include_usage)
