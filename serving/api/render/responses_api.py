"""OpenAI's Responses API shapes drawn from the inference layer's events: the response object, and the typed stream
events that build it (each with its `sequence_number`).

One `ResponseBuilder` per response. It feeds on events as they come and keeps the output items; streamed, its
`start`, `feed` and `finish` return the events to send, whole, the same calls build the object and the events are
dropped. Text opens a message item that stays open until a tool call or the end; a tool call is a whole
`function_call` item (its arguments in one delta: the model's call is parsed whole before it is told).
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from serving.api.render.openai import Usage
from serving.api.schemas.responses_api import CreateResponse
from serving.inference.types import DoneEvent, Event, TokenEvent, ToolCallEvent

Frame = tuple[str, dict[str, Any]]  # (event name, its data)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_object(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


class ResponseBuilder:
    def __init__(self, request: CreateResponse, model_id: str):
        self.output: list[dict[str, Any]] = []
        self.message: dict[str, Any] | None = None  # the message item text is going into, while open
        self.sequence = 0
        self.response: dict[str, Any] = {
            "id": new_id("resp"), "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "completed_at": None, "error": None, "incomplete_details": None, "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens, "model": model_id, "output": self.output,
            "parallel_tool_calls": request.parallel_tool_calls,
            "previous_response_id": request.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "store": request.store,
            "temperature": request.temperature, "text": {"format": request.text.format.echo()},
            "tool_choice": request.tool_choice_echo(), "tools": [tool.echo() for tool in request.tools],
            "top_p": request.top_p, "truncation": request.truncation or "disabled", "usage": None,
            "user": None, "metadata": request.metadata or {},
        }

    @property
    def id(self) -> str:
        return self.response["id"]

    def frame(self, kind: str, **data: Any) -> Frame:
        frame = (kind, {"type": kind, "sequence_number": self.sequence, **data})
        self.sequence += 1
        return frame

    def snapshot(self) -> dict[str, Any]:
        return {**self.response, "output": [dict(item) for item in self.output]}

    def start(self) -> list[Frame]:
        return [self.frame("response.created", response=self.snapshot()),
                self.frame("response.in_progress", response=self.snapshot())]

    def feed(self, event: Event) -> list[Frame]:
        if isinstance(event, TokenEvent):
            if not event.text:
                return []
            frames = [] if self.message is not None else self._open_message()
            part = self.message["content"][0]
            part["text"] += event.text
            return frames + [self.frame("response.output_text.delta", item_id=self.message["id"],
                                        output_index=len(self.output) - 1, content_index=0, delta=event.text,
                                        logprobs=[])]
        if isinstance(event, ToolCallEvent):
            return self._close_message("completed") + self._function_call(event)
        return []

    def finish(self, done: DoneEvent, usage: Usage) -> list[Frame]:
        """The closing frames (the open message's, then response.completed or response.incomplete)."""
        incomplete = done.finish_reason == "length"
        status = "incomplete" if incomplete else "completed"
        frames = ([] if self.output or self.message else self._open_message()) + self._close_message(status)
        self.response.update(status=status, usage=usage_object(usage), completed_at=int(time.time()),
                             incomplete_details={"reason": "max_output_tokens"} if incomplete else None)
        return frames + [self.frame(f"response.{status}", response=self.snapshot())]

    def failed(self, message: str) -> list[Frame]:
        self.response.update(status="failed", error={"code": "server_error", "message": message})
        return [self.frame("error", code="server_error", message=message, param=None),
                self.frame("response.failed", response=self.snapshot())]

    def _open_message(self) -> list[Frame]:
        self.message = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                        "content": []}
        self.output.append(self.message)
        index = len(self.output) - 1
        added = self.frame("response.output_item.added", output_index=index, item=_copy(self.message))
        self.message["content"].append({"type": "output_text", "text": "", "annotations": []})
        return [added, self.frame("response.content_part.added", item_id=self.message["id"], output_index=index,
                                  content_index=0, part={"type": "output_text", "text": "", "annotations": []})]

    def _close_message(self, status: str) -> list[Frame]:
        message, self.message = self.message, None
        if message is None:
            return []
        index, part = self.output.index(message), message["content"][0]
        message["status"] = status
        return [self.frame("response.output_text.done", item_id=message["id"], output_index=index, content_index=0,
                           text=part["text"], logprobs=[]),
                self.frame("response.content_part.done", item_id=message["id"], output_index=index,
                           content_index=0, part=dict(part)),
                self.frame("response.output_item.done", output_index=index, item=_copy(message))]

    def _function_call(self, event: ToolCallEvent) -> list[Frame]:
        call = event.call
        item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress", "call_id": call.id,
                "name": call.name, "arguments": ""}
        self.output.append(item)
        index = len(self.output) - 1
        frames = [self.frame("response.output_item.added", output_index=index, item=dict(item)),
                  self.frame("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                             delta=call.arguments),
                  self.frame("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                             arguments=call.arguments)]
        item.update(arguments=call.arguments, status="completed")
        return frames + [self.frame("response.output_item.done", output_index=index, item=dict(item))]


def _copy(message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "content": [dict(part) for part in message["content"]]}


def history_output(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items in the stored history shape (what `previous_response_id` continues from)."""
    items = []
    for item in output:
        if item["type"] == "message":
            items.append({"type": "message", "role": "assistant",
                          "content": [{"type": "output_text", "text": part["text"]} for part in item["content"]]})
        else:
            items.append({"type": "function_call", "call_id": item["call_id"], "name": item["name"],
                          "arguments": item["arguments"]})
    return items
