"""POST /v1/embeddings (OpenAI) and POST /v1/rerank (llama-server's and Jina's shape). Both lease the model and hand
its handle an `EmbedRequest`; a chat model refuses with a 400 (`model_not_supported`), as an embedding model
refuses chat. Rerank scores are the embedding model's cosine similarities between the query and each document (no
cross-encoder is served here): comparable within one request, not calibrated probabilities. The tokens embedded are
reported to the usage listeners (per-key token limits, metrics) like a generation's prompt.
"""
from __future__ import annotations

from serving.api.render.embeddings import embedding_list, rerank_list
from serving.api.render.openai import Usage
from serving.api.resources.generation import tell_listeners
from serving.api.schemas import read_json
from serving.api.schemas.embeddings import EmbeddingRequest, RerankRequest
from serving.inference.handle import ModelCatalog
from serving.inference.types import EmbedRequest, Embeddings


async def embed(req, models: ModelCatalog, model_id: str, request: EmbedRequest) -> Embeddings:
    req.context.model = model_id
    async with models.lease(model_id) as handle:
        result = await handle.embed(request)
    await tell_listeners(req.context.get("usage_listeners") or [])(Usage(result.prompt_tokens))
    return result


class EmbeddingsEndpoint:
    def __init__(self, models: ModelCatalog):
        self.models = models

    async def on_post(self, req, resp):
        body = await read_json(req, EmbeddingRequest)
        request = EmbedRequest(body.inputs(), body.dimensions, fields=["input"] if body.single else None)
        result = await embed(req, self.models, body.model, request)
        resp.media = embedding_list(body.model, result, body.encoding_format)


class RerankEndpoint:
    def __init__(self, models: ModelCatalog):
        self.models = models

    async def on_post(self, req, resp):
        body = await read_json(req, RerankRequest)
        documents = body.texts()
        fields = ["query", *(f"documents[{i}]" for i in range(len(documents)))]
        result = await embed(req, self.models, body.model, EmbedRequest([body.query, *documents], fields=fields))
        resp.media = rerank_list(body.model, result, documents, body.top_n, body.return_documents)
