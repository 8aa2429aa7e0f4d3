"""OpenAI's wire shapes for chat completions and text completions: whole responses and stream chunks, both drawn
from the inference layer's events. One renderer per response; the generation skeleton drives it."""
from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from serving.inference.types import Event, TokenEvent, TokenLogprob, ToolCall, ToolCallEvent


@dataclass
class Choice:
    """One sequence of a whole (non-streamed) response, accumulated from its events."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)

    def add(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            self.text += event.text
            if event.logprob is not None:
                self.logprobs.append(event.logprob)
        elif isinstance(event, ToolCallEvent):
            self.tool_calls.append(event.call)
        else:
            self.finish_reason = event.finish_reason


@dataclass
class Usage:
    """Token counts of one response; each sequence counts up to its latest event, so a stream that ends early
    (the client left) still counts what was generated until then."""

    prompt_tokens: int
    per_sequence: dict[int, int] = field(default_factory=dict)
    cached_per_sequence: dict[int, int] = field(default_factory=dict)
    first_token_at: float | None = None  # time.perf_counter() of the first generated token (live stats: TTFT)

    @property
    def completion_tokens(self) -> int:
        return sum(self.per_sequence.values())

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens reused from the model's prefix cache. The prompt counts once for all `n` sequences, and
        so does the reuse: what every sequence reused (the least), not what one sequence took from another."""
        return min(self.cached_per_sequence.values(), default=0)

    def add(self, event: Event) -> None:
        if self.first_token_at is None and event.completion_tokens:
            self.first_token_at = time.perf_counter()
        self.per_sequence[event.index] = max(self.per_sequence.get(event.index, 0), event.completion_tokens)
        if event.cached_tokens is not None:
            self.cached_per_sequence[event.index] = event.cached_tokens

    def openai(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


UsageListener = Callable[[Usage], Awaitable[None]]


class Renderer:
    """What both endpoints share: the response id and header fields, and the closing usage chunk."""

    prefix = "cmpl"
    whole_object = chunk_object = "text_completion"

    def __init__(self, model_id: str, ref: str, logprobs: bool, include_usage: bool):
        self.logprobs, self.include_usage = logprobs, include_usage
        self.base = {"id": f"{self.prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model_id,
                     "system_fingerprint": ref}

    def chunk_base(self) -> dict[str, Any]:
        return {**self.base, "object": self.chunk_object, **({"usage": None} if self.include_usage else {})}

    def opening(self, n: int) -> list[dict[str, Any]]:
        return []

    def usage_chunk(self, usage: Usage) -> dict[str, Any] | None:
        if not self.include_usage:
            return None
        return {**self.base, "object": self.chunk_object, "choices": [], "usage": usage.openai()}


class ChatRenderer(Renderer):
    prefix, whole_object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def opening(self, n: int) -> list[dict[str, Any]]:
        return [{**self.chunk_base(), "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]} for index in range(n)]

    def chunk(self, event: Event) -> dict[str, Any]:
        if isinstance(event, TokenEvent):
            logprobs = {"content": [_chat_logprob(event.logprob)]} if event.logprob is not None else None
            choice = {"index": event.index, "delta": {"content": event.text}, "logprobs": logprobs,
                      "finish_reason": None}
        elif isinstance(event, ToolCallEvent):  # a whole call in one delta: its arguments need no reassembly
            choice = {"index": event.index, "delta": {"tool_calls": [{"index": event.call_index,
                                                                      **_tool_call(event.call)}]},
                      "logprobs": None, "finish_reason": None}
        else:
            choice = {"index": event.index, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason}
        return {**self.chunk_base(), "choices": [choice]}

    def whole(self, choices: list[Choice], usage: Usage) -> dict[str, Any]:
        return {**self.base, "object": self.whole_object, "choices": [
            {"index": c.index, "message": _message(c),
             "logprobs": {"content": [_chat_logprob(lp) for lp in c.logprobs]} if self.logprobs else None,
             "finish_reason": c.finish_reason} for c in choices], "usage": usage.openai()}


class CompletionRenderer(Renderer):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.offsets: dict[int, int] = {}  # streamed text so far per choice, for logprobs' text_offset

    def chunk(self, event: Event) -> dict[str, Any]:
        if isinstance(event, TokenEvent):
            logprobs = None
            if event.logprob is not None:
                offset = self.offsets.get(event.index, 0)
                logprobs = _completion_logprobs([event.logprob], offset)
                self.offsets[event.index] = offset + len(event.logprob.token)
            choice = {"index": event.index, "text": event.text, "logprobs": logprobs, "finish_reason": None}
        else:
            choice = {"index": event.index, "text": "", "logprobs": None, "finish_reason": event.finish_reason}
        return {**self.chunk_base(), "choices": [choice]}

    def whole(self, choices: list[Choice], usage: Usage) -> dict[str, Any]:
        return {**self.base, "object": self.whole_object, "choices": [
            {"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
             "logprobs": _completion_logprobs(c.logprobs, 0) if self.logprobs else None} for c in choices],
            "usage": usage.openai()}


def _message(choice: Choice) -> dict[str, Any]:
    """The assistant message of a whole chat choice: its content is null when it holds only tool calls."""
    if not choice.tool_calls:
        return {"role": "assistant", "content": choice.text}
    return {"role": "assistant", "content": choice.text or None,
            "tool_calls": [_tool_call(call) for call in choice.tool_calls]}


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _chat_logprob(entry: TokenLogprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.token.encode()),
            "top_logprobs": [{"token": token, "logprob": value, "bytes": list(token.encode())}
                             for token, value in entry.top]}


def _completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, `text_offset` counting characters into the completion."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) for e in entries], "text_offset": offsets}
