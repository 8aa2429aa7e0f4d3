"""Anthropic's Messages API response shapes, drawn from the inference layer's events: the whole message, or its
stream of named events

    message_start, ping, (content_block_start, content_block_delta..., content_block_stop)..., message_delta,
    message_stop

where a text block grows by `text_delta`s and a tool_use block carries its whole input as one `input_json_delta`
(the inference layer emits a call once it is complete). One builder per response; a message has one sequence.

Usage follows Anthropic's accounting: `input_tokens` are the prompt tokens not read from the prefix cache,
`cache_read_input_tokens` those that were (their sum is the whole prompt, what count_tokens says).
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from serving.api.render.openai import Usage
from serving.inference.types import DoneEvent, Event, TokenEvent, ToolCall, ToolCallEvent

Frame = tuple[str, dict[str, Any]]  # (event name, data); the data's `type` is the same name


def stop_reason(done: DoneEvent | None) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of a sequence's end."""
    if done is None:
        return None, None
    if done.finish_reason == "tool_calls":
        return "tool_use", None
    if done.finish_reason == "length":
        return "max_tokens", None
    if done.stop_sequence is not None:
        return "stop_sequence", done.stop_sequence
    return "end_turn", None


def tool_use(call: ToolCall) -> dict[str, Any]:
    """A tool call as a tool_use block; the call ids the inference layer makes (`call_...`) read `toolu_...`."""
    call_id = "toolu_" + call.id.removeprefix("call_") if call.id.startswith("call_") else call.id
    return {"type": "tool_use", "id": call_id, "name": call.name, "input": json.loads(call.arguments or "{}")}


def usage_body(usage: Usage) -> dict[str, Any]:
    cached = usage.cached_tokens
    return {"input_tokens": usage.prompt_tokens - cached, "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


class MessageBuilder:
    """One message, fed the events of its one sequence: `feed` returns the stream frames an event makes (a whole
    message ignores them), `message` the message as it stands."""

    def __init__(self, model_id: str):
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.model = model_id
        self.content: list[dict[str, Any]] = []
        self.open_text: int | None = None  # the index of the text block still growing
        self.done: DoneEvent | None = None

    def message(self, usage: Usage) -> dict[str, Any]:
        content = self.content or [{"type": "text", "text": ""}]  # never a message without a block
        reason, sequence = stop_reason(self.done)
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": reason, "stop_sequence": sequence, "usage": usage_body(usage)}

    def start(self, usage: Usage) -> list[Frame]:
        opening = self.message(usage) | {"content": []}
        opening["usage"] |= {"output_tokens": 0, "cache_read_input_tokens": None}  # known with the first token
        return [("message_start", {"type": "message_start", "message": opening}), ping()]

    def feed(self, event: Event) -> list[Frame]:
        if isinstance(event, TokenEvent):
            return self._text(event.text) if event.text else []
        if isinstance(event, ToolCallEvent):
            frames = self._close_text()
            block = tool_use(event.call)
            self.content.append(block)
            index = len(self.content) - 1
            return frames + [
                _frame("content_block_start", index=index, content_block=block | {"input": {}}),
                _frame("content_block_delta", index=index,
                       delta={"type": "input_json_delta", "partial_json": json.dumps(block["input"])}),
                _frame("content_block_stop", index=index)]
        self.done = event
        return []

    def finish(self, usage: Usage) -> list[Frame]:
        """The closing frames, once the sequence has ended."""
        frames = [] if self.content else self._text("")  # a message has at least one block, streamed or not
        frames += self._close_text()
        reason, sequence = stop_reason(self.done)
        closing = usage_body(usage)
        return frames + [_frame("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence},
                                usage=closing), _frame("message_stop")]

    def _text(self, text: str) -> list[Frame]:
        frames = []
        if self.open_text is None:
            self.content.append({"type": "text", "text": ""})
            self.open_text = len(self.content) - 1
            frames.append(_frame("content_block_start", index=self.open_text,
                                 content_block={"type": "text", "text": ""}))
        self.content[self.open_text]["text"] += text
        if text:
            frames.append(_frame("content_block_delta", index=self.open_text,
                                 delta={"type": "text_delta", "text": text}))
        return frames

    def _close_text(self) -> list[Frame]:
        if self.open_text is None:
            return []
        index, self.open_text = self.open_text, None
        return [_frame("content_block_stop", index=index)]


def ping() -> Frame:
    return "ping", {"type": "ping"}


def error_frame(message: str) -> Frame:
    """A failure after the stream began: Anthropic's `error` event (the SDKs raise it)."""
    return "error", {"type": "error", "error": {"type": "api_error", "message": message}}


def _frame(name: str, **fields: Any) -> Frame:
    return name, {"type": name, **fields}
