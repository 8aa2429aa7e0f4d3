"""The narrow contracts the API layer talks to: a `ModelHandle` (one servable model, local or remote), the
`ModelCatalog` that resolves ids to handles, and the `StreamCache` that may answer a request from memory. The API
layer imports these protocols and `types`, nothing else.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from serving.inference.types import (EmbedRequest, Embeddings, Event, GenerateRequest, ModelInfo, ModelStats,
                                     ProviderStatus)

# Told of every provider state change: the provider's new status and the state it left.
ProviderListener = Callable[[ProviderStatus, str], None]


class EventStream(Protocol):
    """A started generation: events of all its sequences, tagged by index, in the order they happen."""

    ref: str  # the version generating (a stream begun before a hot swap stays on its version)
    prompt_tokens: int  # final once the events end (a remote upstream tells it only in its last chunk)
    # "hit" or "miss" when a StreamCache considered the request (only deterministic ones), else absent or None
    cache: str | None

    def events(self, heartbeat_s: float | None = None) -> AsyncIterator[Event | None]:
        """Every event until each sequence is done; with `heartbeat_s`, None whenever that long passes quietly."""

    async def aclose(self) -> None:
        """Stop every sequence still running (a client that left frees its slots at once)."""


class ModelHandle(Protocol):
    ref: str

    async def stream(self, request: GenerateRequest) -> EventStream:
        """Validate `request` against this model and start it; raises InvalidRequest or QueueFull before any
        event, so the API can still answer with a status."""

    async def count_tokens(self, request: GenerateRequest) -> int:
        """The prompt tokens `request` would take, rendered exactly as `stream` renders it (template, tools); raises
        InvalidRequest where the model cannot tell (a remote upstream, an embedding model)."""

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

    def providers(self) -> list[ProviderStatus]:
        """Every configured upstream provider's health (none: local models only)."""

    def subscribe_providers(self, listener: ProviderListener) -> None:
        """Call `listener` on every provider state change (for a live event stream)."""

    async def start(self) -> None:
        ...

    async def stop(self) -> None:
        ...


class StreamCache(Protocol):
    """Answers identical deterministic requests from memory (serving/inference/cache.py)."""

    async def stream(self, handle: ModelHandle, request: GenerateRequest, scope: str = "") -> EventStream:
        """`handle.stream(request)`, or a replay of its earlier answer; `scope` keeps callers' entries apart."""
