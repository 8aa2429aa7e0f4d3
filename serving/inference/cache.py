"""A response cache for identical deterministic requests, local and remote models alike (server config `cache:`).

Only requests that say they are deterministic are cached: temperature 0, or a seed (a model whose spec defaults to
temperature 0 is not enough: the request must say it). The key is the sha256 of the canonical JSON of the whole
`GenerateRequest`, the version or provider model that answers it (`handle.ref`: a newly published version is a new
key) and a scope (the API key's name: one key never learns what another asked).

What is kept is the answer's events (text, logprobs, finish reasons, token counts), so one entry replays as a whole
response or as a stream, chunk by chunk, through the same renderers; each replay gets a fresh id and timestamp. Only
answers that ended normally are stored: a stream the client left, or one that failed, is not. Entries expire after
`ttl_s`; beyond `max_entries` or `max_mb` (text plus a fixed overhead per event, estimated) the least recently used
go. The cache lives in each worker's memory, so with several workers a repeat may miss until each has seen it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from factory.server_config import CacheConfig
from serving.inference.handle import EventStream, ModelHandle
from serving.inference.types import DoneEvent, Event, GenerateRequest, TokenEvent, ToolCallEvent

EVENT_OVERHEAD = 200  # bytes an event object takes beyond its text, roughly (dataclass, list slot, logprob tuple)


@dataclass
class Entry:
    ref: str
    prompt_tokens: int
    events: list[Event]
    size: int
    expires: float


def cache_key(ref: str, request: GenerateRequest, scope: str = "") -> str | None:
    """The key of a deterministic request, None for any other."""
    sampling = request.sampling
    if sampling.temperature != 0 and sampling.seed is None:
        return None
    canonical = json.dumps({"ref": ref, "scope": scope, "request": dataclasses.asdict(request)}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_size(events: list[Event]) -> int:
    size = 0
    for event in events:
        size += EVENT_OVERHEAD
        if isinstance(event, TokenEvent):
            size += len(event.text.encode())
            if event.logprob is not None:
                size += len(event.logprob.token.encode()) + sum(len(t.encode()) + 32 for t, _ in event.logprob.top)
        elif isinstance(event, ToolCallEvent):  # replayed with the same call ids: the answer is the same answer
            size += len(event.call.id) + len(event.call.name.encode()) + len(event.call.arguments.encode())
    return size


class ResponseCache:
    """The `StreamCache` of one worker."""

    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic):
        self.config, self.clock = config, clock
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.size = 0
        self.hits = self.misses = 0

    async def stream(self, handle: ModelHandle, request: GenerateRequest, scope: str = "") -> EventStream:
        key = cache_key(handle.ref, request, scope)
        if key is None:
            return await handle.stream(request)
        if (entry := self.get(key)) is not None:
            self.hits += 1
            return Replay(entry)
        self.misses += 1
        inner = await handle.stream(request)
        return Recording(inner, lambda events: self.put(key, Entry(inner.ref, inner.prompt_tokens, events,
                                                                   entry_size(events), 0)))

    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self._drop(key)
            return None
        self.entries.move_to_end(key)  # most recently used last
        return entry

    def put(self, key: str, entry: Entry) -> None:
        budget = self.config.max_mb * 1e6
        if entry.size > budget:
            return  # larger than the whole cache: keeping it would evict everything for one answer
        if key in self.entries:
            self._drop(key)
        entry.expires = self.clock() + self.config.ttl_s
        self.entries[key] = entry
        self.size += entry.size
        now = self.clock()
        for old in [k for k, e in self.entries.items() if e.expires <= now]:
            self._drop(old)
        while len(self.entries) > self.config.max_entries or self.size > budget:
            self._drop(next(iter(self.entries)))  # least recently used first

    def _drop(self, key: str) -> None:
        self.size -= self.entries.pop(key).size


class Replay:
    """A cached answer as an EventStream: its events at once, in their order."""

    cache = "hit"

    def __init__(self, entry: Entry):
        self.entry, self.ref, self.prompt_tokens = entry, entry.ref, entry.prompt_tokens

    async def events(self, heartbeat_s: float | None = None) -> AsyncIterator[Event | None]:
        for event in self.entry.events:
            yield event

    async def aclose(self) -> None:
        pass


class Recording:
    """An answer on its way: its events pass through and are kept; stored once every sequence ended normally."""

    cache = "miss"

    def __init__(self, inner: EventStream, store: Callable[[list[Event]], None]):
        self.inner, self.store = inner, store
        self.ref = inner.ref

    @property
    def prompt_tokens(self) -> int:
        return self.inner.prompt_tokens

    async def events(self, heartbeat_s: float | None = None) -> AsyncIterator[Event | None]:
        kept: list[Event] = []
        async for event in self.inner.events(heartbeat_s):
            if event is not None:
                kept.append(event)
            yield event
        # Reached only when the stream ran to its end (a client that left closes this generator at its yield).
        if not any(isinstance(event, DoneEvent) and event.error for event in kept):
            self.store(kept)

    async def aclose(self) -> None:
        await self.inner.aclose()
