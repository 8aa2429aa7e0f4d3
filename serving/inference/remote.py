"""A model of an upstream provider as a `ModelHandle`: the request goes upstream as OpenAI's chat or text completion
with `stream: true`, and the upstream's server-sent chunks come back as the inference layer's TokenEvent and
DoneEvent, so this server's renderers, usage, metrics, rate limits and cache apply unchanged, streamed or not.

Every refusal (unhealthy provider, too many requests in flight, an upstream 4xx, every replica failing) is raised by
`stream()` before any event, so the client still gets a status. After that, a broken upstream ends the unfinished
sequences with an error event; nothing is retried once the upstream's 200 has arrived.

Token counts: each chunk with text is one token (what llama.cpp, vLLM, Ollama and OpenAI send) until the upstream's
closing usage (asked for with `stream_options.include_usage`) gives the exact totals; an upstream that sends no usage
(llama_cpp.server) leaves prompt_tokens at 0. The last sequence's finishing event is held back until the upstream's
stream ends, since the usage arrives after it; the others go out as they finish, so events keep their order.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from serving.inference.providers import Provider, Replica, describe_error
from serving.inference.types import (DoneEvent, EmbedRequest, Embeddings, Event, GenerateRequest, InvalidRequest,
                                     ModelInfo, TokenEvent, TokenLogprob, queued_events)

FINISH_REASONS = ("stop", "length")  # anything else an upstream says (tool_calls, content_filter) is a stop here


class RemoteModel:
    def __init__(self, provider: Provider, model: str):
        self.provider, self.model = provider, model  # model: the upstream's own id
        self.ref = f"{provider.name}/{model}"

    def describe(self) -> ModelInfo:
        return self.provider.describe(self.model)

    async def embed(self, request: EmbedRequest) -> Embeddings:
        raise InvalidRequest(f"{self.ref} is served by provider {self.provider.name}; embeddings through providers "
                             f"are not supported yet", param="model", code="model_not_supported")

    async def count_tokens(self, request: GenerateRequest) -> int:
        raise InvalidRequest(f"{self.ref} is served by provider {self.provider.name}, whose tokenizer and template "
                             f"this server does not have: it cannot count its tokens", param="model",
                             code="model_not_supported")

    async def stream(self, request: GenerateRequest) -> "RemoteStream":
        refuse_tools(self.ref, request)
        path, body = wire_request(self.model, request)
        release = self.provider.admit()
        try:
            response, replica = await self.provider.send(path, body, self.ref)
        except BaseException:
            release()
            raise
        return RemoteStream(self, response, replica, request.n, chat=request.messages is not None, release=release)


def refuse_tools(ref: str, request: GenerateRequest) -> None:
    """Tools, tool history and output formats are not relayed: the upstream's tool-call deltas would need their own
    parsing into ToolCallEvents, and an upstream's support for them differs (llama_cpp.server's depends on its chat
    format). Refused in words rather than silently dropped."""
    asked = ("tools" if request.tools else "response_format" if request.output_format is not None
             else "messages" if any(m.get("tool_calls") or m.get("role") == "tool" for m in request.messages or [])
             else None)
    if asked is not None:
        raise InvalidRequest(f"{ref} is served by an upstream provider; tools, tool calls in the history and "
                             f"response_format are not relayed to providers yet (serve the model locally for them)",
                             param=asked, code="not_supported_by_provider")


def wire_request(model: str, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
    """The upstream path and body: what the client asked, values left unset left to the upstream's defaults."""
    asked = request.sampling
    body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    optional = {"max_tokens": asked.max_tokens, "temperature": asked.temperature, "top_p": asked.top_p,
                "seed": asked.seed, "presence_penalty": asked.presence_penalty,
                "frequency_penalty": asked.frequency_penalty, "stop": asked.stop or None,
                "n": request.n if request.n != 1 else None,
                "logit_bias": {str(token): bias for token, bias in asked.logit_bias.items()} if asked.logit_bias
                else None}
    body.update({key: value for key, value in optional.items() if value is not None})
    if request.messages is not None:
        body["messages"] = request.messages
        if asked.logprobs:
            body.update(logprobs=True, top_logprobs=asked.top_logprobs)
        return "/chat/completions", body
    body["prompt"] = request.prompt
    if request.suffix is not None:  # fill-in-the-middle: the upstream's own model decides whether it can
        body["suffix"] = request.suffix
    if asked.logprobs:
        body["logprobs"] = asked.top_logprobs
    return "/completions", body


class RemoteStream:
    """The events of one upstream response, read by a task of their own (so a quiet upstream still lets the API send
    keep-alives); closing it closes the upstream connection, which stops the upstream's generation."""

    cache = None

    def __init__(self, model: RemoteModel, response: httpx.Response, replica: Replica, n: int, *, chat: bool,
                 release: Callable[[], None]):
        self.model, self.response, self.replica, self.n, self.release = model, response, replica, n, release
        self.ref, self.prompt_tokens = model.ref, 0
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.parser = ChunkParser(n, chat)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        error = None
        try:
            async for line in self.response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments (keep-alives), event names, blank separators
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                for event in self.parser.feed(json.loads(data)):
                    self.queue.put_nowait(event)
        except httpx.HTTPError as exc:
            error = f"the upstream connection failed mid-stream ({describe_error(exc)})"
            self.model.provider.failed(self.replica, describe_error(exc), down=False)
        except (ValueError, TypeError, AttributeError) as exc:
            error = f"the upstream sent a malformed stream ({type(exc).__name__}: {exc})"[:500]
        except UpstreamStreamError as exc:
            error = self.model.provider.scrub(f"the upstream reported an error: {exc}")
        finally:
            await self.response.aclose()
        self.prompt_tokens = self.parser.prompt_tokens  # before the last events: readers take it once they end
        for event in self.parser.finish(error):
            self.queue.put_nowait(event)

    def events(self, heartbeat_s: float | None = None) -> AsyncIterator[Event | None]:
        return queued_events(self.queue, self.n, heartbeat_s)

    async def aclose(self) -> None:
        if not self.reader.done():
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        await self.response.aclose()
        self.release()


class UpstreamStreamError(Exception):
    """An error frame inside the upstream's stream."""


class ChunkParser:
    """OpenAI stream chunks (chat or text completion) to events for `n` sequences."""

    def __init__(self, n: int, chat: bool):
        self.n, self.chat = n, chat
        self.tokens = [0] * n
        self.finished: dict[int, str] = {}
        self.sent: set[int] = set()  # sequences whose DoneEvent went out
        self.usage: dict[str, Any] | None = None

    @property
    def prompt_tokens(self) -> int:
        return int((self.usage or {}).get("prompt_tokens") or 0)

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if chunk.get("error"):
            error = chunk["error"]
            raise UpstreamStreamError(error.get("message") if isinstance(error, dict) else str(error))
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        events: list[Event] = []
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            if not isinstance(index, int) or not 0 <= index < self.n or index in self.finished:
                continue
            text = ((choice.get("delta") or {}).get("content") if self.chat else choice.get("text")) or ""
            logprobs = (chat_logprobs if self.chat else completion_logprobs)(choice.get("logprobs"))
            if text or logprobs:
                self.tokens[index] += max(1, len(logprobs))
                # One event per token when the chunk carries several logprobs: the text rides on the first.
                for position, logprob in enumerate(logprobs or [None]):
                    events.append(TokenEvent(index, text if position == 0 else "", logprob,
                                             completion_tokens=self.tokens[index]))
            if choice.get("finish_reason"):
                reason = choice["finish_reason"]
                self.finished[index] = reason if reason in FINISH_REASONS else "stop"
                if len(self.finished) < self.n:  # others still run: this count is final, the usage is not near
                    events.append(DoneEvent(index, self.finished[index], self.tokens[index]))
                    self.sent.add(index)
        return events

    def finish(self, error: str | None) -> list[DoneEvent]:
        """The closing event of every sequence: counts made exact by the upstream's usage where it sent one; a
        sequence the upstream never finished ends with `error` (or says the stream ended early)."""
        counts = list(self.tokens)
        held = [index for index in range(self.n) if index not in self.sent]
        total = (self.usage or {}).get("completion_tokens")
        if isinstance(total, int) and total > sum(counts) and held:
            counts[held[-1]] += total - sum(counts)  # the upstream counts all choices together; a chunk may hold more
        elif isinstance(total, int) and total >= 0 and self.n == 1:
            counts[0] = total
        events = []
        for index in held:
            if index in self.finished:
                events.append(DoneEvent(index, self.finished[index], counts[index]))
            else:
                events.append(DoneEvent(index, "stop", counts[index],
                                        error=error or "the upstream ended its stream before this choice finished"))
        return events


def chat_logprobs(value: Any) -> list[TokenLogprob]:
    """A chat chunk's `logprobs.content`: [{token, logprob, top_logprobs: [{token, logprob}]}]."""
    if not isinstance(value, dict) or not isinstance(value.get("content"), list):
        return []
    return [TokenLogprob(str(entry.get("token", "")), float(entry.get("logprob") or 0.0),
                         [(str(top.get("token", "")), float(top.get("logprob") or 0.0))
                          for top in entry.get("top_logprobs") or [] if isinstance(top, dict)])
            for entry in value["content"] if isinstance(entry, dict)]


def completion_logprobs(value: Any) -> list[TokenLogprob]:
    """A text completion chunk's parallel lists: tokens, token_logprobs, top_logprobs ([{token: logprob}])."""
    if not isinstance(value, dict) or not isinstance(value.get("tokens"), list):
        return []
    values = value.get("token_logprobs") or []
    tops = value.get("top_logprobs") or []
    return [TokenLogprob(str(token), float(values[i] or 0.0) if i < len(values) else 0.0,
                         [(str(t), float(v or 0.0)) for t, v in (tops[i] or {}).items()] if i < len(tops) else [])
            for i, token in enumerate(value["tokens"])]
