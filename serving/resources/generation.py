"""What chat and text completions share: a lease on the model, sampling parameters, submitting `n` sequences,
collecting them, and streaming them as server-sent events."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from falcon.asgi import SSEvent

from serving.errors import APIError, invalid, model_not_found, queue_full
from serving.pool import ModelPool, ServedModel, UnknownModel
from serving.scheduler import DoneEvent, Generation, QueueFull, TokenEvent
from serving.schemas import GenerationRequest, SamplingParams


@dataclass
class Choice:
    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)


async def open_lease(pool: ModelPool, model_id: str, stack: AsyncExitStack) -> ServedModel:
    try:
        return await stack.enter_async_context(pool.lease(model_id))
    except UnknownModel as exc:
        raise model_not_found(model_id, str(exc)) from None


def sampling_params(request: GenerationRequest, model: ServedModel, prompt_tokens: int, max_tokens: int | None,
                    logprobs: bool = False, top_logprobs: int = 0) -> list[SamplingParams]:
    """One parameter set per choice (`n`), after checking them against the model and its context window."""
    engine, defaults = model.engine, model.serve.get("defaults", {})
    if (request.presence_penalty or request.frequency_penalty) and not engine.supports_penalties:
        raise invalid(f"presence/frequency penalties are not supported by the {engine.family} engine",
                      param="presence_penalty" if request.presence_penalty else "frequency_penalty")
    if logprobs and not engine.supports_logprobs:
        raise invalid(f"logprobs are not supported by the {engine.family} engine", param="logprobs")
    room = model.context_length - prompt_tokens
    if room <= 0:
        raise invalid(f"the prompt has {prompt_tokens} tokens; this model's context length is "
                      f"{model.context_length}", param="messages", code="context_length_exceeded")
    wanted = max_tokens or min(int(defaults.get("max_tokens", 512)), room)
    if wanted > room:
        raise invalid(f"max_tokens {wanted} plus the prompt's {prompt_tokens} tokens exceed this model's context "
                      f"length {model.context_length}", param="max_tokens", code="context_length_exceeded")
    try:
        bias = {int(token): value for token, value in (request.logit_bias or {}).items()} or None
    except ValueError:
        raise invalid("logit_bias keys must be token ids", param="logit_bias") from None
    return [SamplingParams(
        max_tokens=wanted,
        temperature=request.temperature if request.temperature is not None else defaults.get("temperature", 0.7),
        top_p=request.top_p if request.top_p is not None else defaults.get("top_p", 1.0),
        stop=request.stop_list(),
        seed=None if request.seed is None else request.seed + index,
        logprobs=logprobs, top_logprobs=top_logprobs,
        presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty, logit_bias=bias,
    ) for index in range(request.n)]


def submit_all(model: ServedModel, prompt: list[int], params: list[SamplingParams]) -> list[Generation]:
    generations: list[Generation] = []
    try:
        for p in params:
            generations.append(model.scheduler.submit(prompt, p))
    except QueueFull:
        for generation in generations:
            model.scheduler.cancel(generation)
        raise queue_full() from None
    return generations


async def collect(model: ServedModel, generations: list[Generation], token_text: Callable[[int], str]) -> list[Choice]:
    """Wait for every sequence; returns one Choice each (used by non-streaming responses)."""
    choices = [Choice(index=i) for i in range(len(generations))]
    try:
        async for index, event in merged(generations):
            choice = choices[index]
            if isinstance(event, TokenEvent):
                choice.text += event.text
                if event.logprob is not None:
                    choice.logprobs.append(logprob_entry(event, token_text))
            elif event.error:
                raise APIError(500, f"generation failed: {event.error}", type_="server_error")
            else:
                choice.finish_reason = event.finish_reason
    finally:
        for generation in generations:
            model.scheduler.cancel(generation)  # no-op for finished ones; frees slots if we are bailing out
    return choices


async def merged(generations: list[Generation],
                 heartbeat_s: float | None = None) -> AsyncIterator[tuple[int, TokenEvent | DoneEvent | None]]:
    """Events of several sequences as they come, tagged with the sequence's index; with `heartbeat_s`, (-1, None)
    whenever that long passes without an event."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        async for event in generation:
            await queue.put((index, event))

    pumps = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        remaining = len(generations)
        while remaining:
            try:
                index, event = await asyncio.wait_for(queue.get(), heartbeat_s)
            except TimeoutError:
                yield -1, None
                continue
            remaining -= isinstance(event, DoneEvent)
            yield index, event
    finally:
        for task in pumps:
            task.cancel()


def logprob_entry(event: TokenEvent, token_text: Callable[[int], str]) -> dict[str, Any]:
    text = token_text(event.token)
    return {"token": text, "logprob": event.logprob, "bytes": list(text.encode()),
            "top_logprobs": [{"token": token_text(t), "logprob": lp, "bytes": list(token_text(t).encode())}
                             for t, lp in event.top_logprobs or []]}


def usage(prompt_tokens: int, generations: list[Generation]) -> dict[str, int]:
    completion = sum(g.completion_tokens for g in generations)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


HEARTBEAT_S = 1.0


async def sse_stream(stack: AsyncExitStack, model: ServedModel, generations: list[Generation],
                     chunk: Callable[[int, TokenEvent | DoneEvent], dict[str, Any] | None],
                     first: Callable[[int], dict[str, Any] | None], usage_chunk: dict[str, Any] | None,
                     prompt_tokens: int) -> AsyncIterator[SSEvent]:
    """Server-sent events for `n` sequences; on client disconnect the sequences are cancelled at once.

    Falcon notices a disconnect only when it sends an event, so a request still waiting in the queue sends an SSE
    comment every second: clients ignore it, and a client that has gone frees its place in the queue.
    """
    try:
        for index in range(len(generations)):
            if (opening := first(index)) is not None:
                yield SSEvent(json=opening)
        async for index, event in merged(generations, heartbeat_s=HEARTBEAT_S):
            if event is None:
                yield SSEvent(comment="keep-alive")
                continue
            if isinstance(event, DoneEvent) and event.error:
                yield SSEvent(json={"error": {"message": f"generation failed: {event.error}", "type": "server_error",
                                              "param": None, "code": None}})
                return
            if (body := chunk(index, event)) is not None:
                yield SSEvent(json=body)
        if usage_chunk is not None:
            yield SSEvent(json={**usage_chunk, "usage": usage(prompt_tokens, generations)})
        yield SSEvent(data=b"[DONE]")
    finally:
        for generation in generations:
            model.scheduler.cancel(generation)
        await stack.aclose()


def now() -> int:
    return int(time.time())
