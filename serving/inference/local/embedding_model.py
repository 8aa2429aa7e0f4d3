"""A registry version of an embedding model (`task: embedding`) loaded on a local runtime: the `ModelHandle` behind
/v1/embeddings and /v1/rerank. It checks a request against the model (how many inputs, how long each, which
`dimensions`), tokenizes off the event loop, embeds through the batcher (shared with concurrent requests) and
shortens vectors when asked: the first `dimensions` values, renormalised when the model's vectors are unit length.
It does not generate: a chat or completion request is refused naming the endpoints it serves.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from factory.registry import Version
from factory.spec import Serve
from formats.embeddings.runtime import Embedder, normalised
from serving.inference.local.describe import model_info
from serving.inference.local.embed_batcher import EmbeddingBatcher
from serving.inference.types import EmbedRequest, Embeddings, GenerateRequest, InvalidRequest, ModelInfo

log = logging.getLogger("factory.serving")


@dataclass
class EmbeddingModel:
    version: Version
    serve: Serve
    artifact: str
    engine: Embedder
    scheduler: EmbeddingBatcher
    nbytes: int
    limits: dict[str, Any]  # the manifest's `embedding` section: allowed_dimensions, max_inputs, ...
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False

    @classmethod
    def around(cls, engine: Embedder, version: Version, serve: Serve, artifact: str, nbytes: int,
               limits: dict[str, Any], queue_size: int) -> "EmbeddingModel":
        return cls(version=version, serve=serve, artifact=artifact, engine=engine, nbytes=nbytes, limits=limits,
                   scheduler=EmbeddingBatcher(engine, queue_size, version.ref))

    @property
    def ref(self) -> str:
        return self.version.ref

    @property
    def max_tokens(self) -> int:
        """The longest input: the model's own limit, or the spec's `serve.context_length` when smaller."""
        return min(self.engine.max_tokens, self.serve.context_length)

    def describe(self) -> ModelInfo:
        return model_info(self.ref, self.version, self.serve, self.version.aliases, loaded=True, embedding=self.limits)

    async def stream(self, request: GenerateRequest):
        raise InvalidRequest(f"{self.ref} is an embedding model: it serves /v1/embeddings and /v1/rerank, not text "
                             f"generation", param="model", code="model_not_supported")

    async def count_tokens(self, request: GenerateRequest) -> int:
        raise InvalidRequest(f"{self.ref} is an embedding model: it has no chat template to count messages "
                             f"through", param="model", code="model_not_supported")

    async def embed(self, request: EmbedRequest) -> Embeddings:
        inputs = request.inputs
        if len(inputs) > self.limits["max_inputs"]:
            raise InvalidRequest(f"{len(inputs)} inputs in one request; {self.ref} takes at most "
                                 f"{self.limits['max_inputs']}", param=request.field(len(inputs) - 1).split("[")[0],
                                 code="too_many_inputs")
        allowed = self.limits["allowed_dimensions"]
        if request.dimensions is not None and request.dimensions not in allowed:
            raise InvalidRequest(f"dimensions {request.dimensions}: {self.ref} makes vectors of "
                                 f"{', '.join(map(str, allowed))} dimensions", param="dimensions")
        tokens = await asyncio.to_thread(self._tokens, request)
        vectors = await self.scheduler.embed(tokens)
        if request.dimensions is not None and request.dimensions < vectors.shape[1]:
            vectors = vectors[:, :request.dimensions]
            if self.engine.settings["normalize"]:
                vectors = normalised(vectors)
        return Embeddings(vectors=vectors, prompt_tokens=sum(map(len, tokens)), ref=self.ref)

    def _tokens(self, request: EmbedRequest) -> list[list[int]]:
        """Each input's token ids, refused when one is too long or names a token the model does not have."""
        limit, vocabulary = self.max_tokens, self.engine.vocab_size
        tokens = []
        for index, item in enumerate(request.inputs):
            ids = self.engine.tokenize(item) if isinstance(item, str) else item
            field = request.field(index)
            if len(ids) > limit:
                raise InvalidRequest(f"{field} has {len(ids)} tokens; {self.ref} embeds at most {limit}",
                                     param=field, code="context_length_exceeded")
            if not isinstance(item, str) and not all(0 <= token < vocabulary for token in ids):
                raise InvalidRequest(f"{field}: token ids must be between 0 and {vocabulary - 1}", param=field)
            tokens.append(ids)
        return tokens

    def unload(self) -> None:
        self.scheduler.close()
        self.engine.close()
        log.info("unloaded %s", self.ref)
