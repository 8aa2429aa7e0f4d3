"""The narrow contracts the API layer talks to: a `ModelHandle` (one servable model, local or remote) and the
`ModelCatalog` that resolves ids to handles. The API layer imports these protocols and `types`, nothing else.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from serving.inference.types import EmbedRequest, Embeddings, Event, GenerateRequest, ModelInfo, ModelStats


class EventStream(Protocol):
    """A started generation: events of all its sequences, tagged by index, in the order they happen."""

    ref: str  # the version generating (a stream begun before a hot swap stays on its version)
    prompt_tokens: int

    def events(self, heartbeat_s: float | None = None) -> AsyncIterator[Event | None]:
        """Every event until each sequence is done; with `heartbeat_s`, None whenever that long passes quietly."""

    async def aclose(self) -> None:
        """Stop every sequence still running (a client that left frees its slots at once)."""


class ModelHandle(Protocol):
    ref: str

    async def stream(self, request: GenerateRequest) -> EventStream:
        """Validate `request` against this model and start it; raises InvalidRequest or QueueFull before any
        event, so the API can still answer with a status."""

    async def embed(self, request: EmbedRequest) -> Embeddings:
        """One vector per input, batched with other requests' inputs; raises InvalidRequest where the model does
        not embed or an input is too long, QueueFull when the model is busy."""

    def describe(self) -> ModelInfo:
        ...


class ModelCatalog(Protocol):
    """Every model this server can serve: ids, metadata, and leases on handles."""

    def ids(self) -> list[str]:
        """The ids `/v1/models` lists."""

    async def describe(self, model_id: str) -> ModelInfo:
        """Metadata without loading anything; raises UnknownModel."""

    def lease(self, model_id: str) -> AbstractAsyncContextManager[ModelHandle]:
        """A handle kept usable until the block ends (loaded on first use); raises UnknownModel."""

    async def probe(self) -> ModelInfo:
        """The default model, loaded: raises Unavailable with the reason when the server cannot serve."""

    def stats(self) -> list[ModelStats]:
        ...

    async def start(self) -> None:
        ...

    async def stop(self) -> None:
        ...
