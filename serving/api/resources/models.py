"""GET /v1/models and /v1/models/{id}: every servable id with its metadata, in OpenAI's model shape. A provider's
model id holds a slash (`ollama/llama3.2`, even `ollama/hf.co/org/model`), so it has a route of its own."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from serving.inference.handle import ModelCatalog
from serving.inference.types import ModelInfo


class Models:
    def __init__(self, models: ModelCatalog):
        self.models = models

    async def on_get(self, req, resp):
        resp.media = {"object": "list", "data": [model_object(await self.models.describe(model_id))
                                                 for model_id in self.models.ids()]}

    async def on_get_one(self, req, resp, model_id: str):
        resp.media = model_object(await self.models.describe(model_id))

    async def on_get_provided(self, req, resp, model_id: str, model: str):
        resp.media = model_object(await self.models.describe(f"{model_id}/{model}"))  # model_id: the provider


def model_object(info: ModelInfo) -> dict[str, Any]:
    fields = asdict(info)
    extra, created = fields.pop("extra"), fields.pop("created")
    del fields["name"]
    return {**fields, "object": "model", "created": int(created), "owned_by": "llm-factory", **extra}
