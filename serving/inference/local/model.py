"""A registry version loaded on a local engine: the `ModelHandle` that chat and text completions share.

`stream` renders and tokenizes off the event loop (`prompts.py`; tools, tool history and output formats per the
chat template's family: `tools.py`), checks the request against the model (context length, what the engine
supports), resolves sampling defaults from the spec's `serve` section (a forced tool call's or output format's
grammar on every sequence), and submits the `n` sequences to the model's scheduler as one unit. Its events come back
on one queue; when tools were offered, calls are read out of the text on the way (`tool_calls.py`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from factory.registry import Version
from factory.spec import Serve
from serving.inference.local.describe import model_info
from serving.inference.local.engines.base import Engine
from serving.inference.local.fim import fim_stop_tokens
from serving.inference.local.prompts import prompt_tokens
from serving.inference.local.scheduler import Generation, Scheduler
from serving.inference.local.tool_calls import with_tool_calls
from serving.inference.local.tools import ToolPlan, plan
from serving.inference.types import (EmbedRequest, Embeddings, Event, GenerateRequest, InvalidRequest, ModelInfo,
                                     SamplingParams, queued_events)

log = logging.getLogger("factory.serving")
# Clients may send any integer seed (OpenAI does not bound it); the engines' generators take unsigned 32-bit ones.
SEED_RANGE = 2**32


@dataclass
class LocalModel:
    version: Version
    serve: Serve
    artifact: str
    engine: Engine
    scheduler: Scheduler
    nbytes: int
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False

    @property
    def ref(self) -> str:
        return self.version.ref

    def describe(self) -> ModelInfo:
        return model_info(self.ref, self.version, self.serve, self.version.aliases, loaded=True)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        raise InvalidRequest(f"{self.ref} is a chat model; it does not produce embeddings (a spec with "
                             f"`task: embedding` builds an embedding model, also from a decoder LM)",
                             param="model", code="model_not_supported")

    async def count_tokens(self, request: GenerateRequest) -> int:
        return len((await self._prompt(request))[0])

    async def _prompt(self, request: GenerateRequest) -> tuple[list[int], ToolPlan]:
        """The prompt's tokens, rendered and tokenized off the event loop, and the request's tool plan."""
        tools = await asyncio.to_thread(plan, self.engine, request)  # tools, history, output format (tools.py)
        rendered = request if tools.messages is None else replace(request, messages=tools.messages)
        return await asyncio.to_thread(prompt_tokens, self.engine, rendered, self.serve.context_length,
                                       tools.render), tools

    async def stream(self, request: GenerateRequest) -> "LocalStream":
        arrived = time.perf_counter()  # the time to first token counts rendering and tokenizing too
        prompt, tools = await self._prompt(request)
        params = [replace(p, grammar=tools.grammar) for p in self._sampling(request, len(prompt))]
        if request.suffix is not None and (stops := fim_stop_tokens(self.engine)):
            params = [replace(p, stop_tokens=p.stop_tokens + stops) for p in params]  # the middle's end (fim.py)
        events: asyncio.Queue = asyncio.Queue()
        generations = self.scheduler.submit(prompt, params, events, arrived)
        return LocalStream(self, generations, events, len(prompt), tools.family if tools.parse else None,
                           max_calls=None if request.parallel_tool_calls else 1)

    def unload(self) -> None:
        self.scheduler.stop()
        self.engine.close()
        log.info("unloaded %s", self.ref)

    # ------------------------------------------------------------ request checks

    def _sampling(self, request: GenerateRequest, prompt_length: int) -> list[SamplingParams]:
        """One parameter set per sequence, every value resolved, after checking them against the engine and the
        context window."""
        engine, defaults, context, asked = self.engine, self.serve.defaults, self.serve.context_length, request.sampling
        if (asked.presence_penalty or asked.frequency_penalty) and not engine.supports_penalties:
            raise InvalidRequest(f"presence/frequency penalties are not supported by the {engine.name} engine",
                                 param="presence_penalty" if asked.presence_penalty else "frequency_penalty")
        if asked.logprobs and not engine.supports_logprobs:
            raise InvalidRequest(f"logprobs are not supported by the {engine.name} engine", param="logprobs")
        if any(not 0 <= token < engine.vocab_size for token in asked.logit_bias or {}):
            raise InvalidRequest(f"logit_bias keys must be token ids of this model (0 to {engine.vocab_size - 1})",
                                 param="logit_bias")
        room = context - prompt_length
        if room <= 0:
            raise InvalidRequest(f"the prompt has {prompt_length} tokens; this model's context length is {context}",
                                 param=request.input_param, code="context_length_exceeded")
        # A max_tokens beyond the room left is capped, not refused (as llama-server, Ollama and LM Studio do):
        # coding clients send fixed large defaults (Continue 4096, Claude Code 32000) whatever the model's context,
        # and the sequence then ends with finish_reason "length" where the context does.
        wanted = min(asked.max_tokens or defaults.max_tokens, room)
        resolved = replace(asked, max_tokens=wanted,
                           temperature=defaults.temperature if asked.temperature is None else asked.temperature,
                           top_p=defaults.top_p if asked.top_p is None else asked.top_p)
        return [replace(resolved, seed=None if asked.seed is None else (asked.seed + index) % SEED_RANGE)
                for index in range(request.n)]


class LocalStream:
    """The events of one request's sequences; closing it cancels whatever still runs."""

    def __init__(self, model: LocalModel, generations: list[Generation], events: asyncio.Queue, prompt_tokens: int,
                 tool_family: str | None = None, max_calls: int | None = None):
        self.model, self.generations, self.queue = model, generations, events
        self.ref, self.prompt_tokens = model.ref, prompt_tokens
        self.tool_family, self.max_calls = tool_family, max_calls  # tools offered: calls are read out of the text

    def events(self, heartbeat_s: float | None = None) -> AsyncIterator[Event | None]:
        events = queued_events(self.queue, len(self.generations), heartbeat_s)
        return events if self.tool_family is None else with_tool_calls(events, self.tool_family, self.max_calls)

    async def aclose(self) -> None:
        for generation in self.generations:
            self.model.scheduler.cancel(generation)  # a no-op for finished ones
