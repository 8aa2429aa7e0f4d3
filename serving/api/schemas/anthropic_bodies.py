"""Anthropic's Messages API response bodies, for the OpenAPI document (serving/api/render/anthropic.py writes
them): the message, its stream events, the token count, and Anthropic's error body."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, Json

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextContent(BaseModel):
    type: Literal["text"]
    text: str


class ToolUseContent(BaseModel):
    type: Literal["tool_use"]
    id: Annotated[str, Field(description="toolu_...")]
    name: str
    input: Annotated[dict[str, Any], Field(description="the call's arguments, parsed")]


class MessageUsage(BaseModel):
    input_tokens: Annotated[int, Field(description="prompt tokens not read from the prefix cache")]
    output_tokens: int
    cache_read_input_tokens: Annotated[int | None, Field(description="prompt tokens reused from the prefix cache "
                                                                     "(null in message_start: not known yet)")]
    cache_creation_input_tokens: int = 0


class AnthropicMessage(BaseModel):
    id: Annotated[str, Field(description="msg_...")]
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[Annotated[TextContent | ToolUseContent, Field(discriminator="type")]]
    stop_reason: StopReason | None
    stop_sequence: Annotated[str | None, Field(description="the stop sequence that ended the message")]
    usage: MessageUsage


class MessageTokensCount(BaseModel):
    input_tokens: Annotated[int, Field(description="the prompt's tokens, by the model's own template and tokenizer")]


class AnthropicErrorObject(BaseModel):
    type: Literal["invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                  "timeout_error", "request_too_large", "rate_limit_error", "api_error", "overloaded_error"]
    message: str


class AnthropicError(BaseModel):
    """Every error on /v1/messages...: Anthropic's shape."""

    type: Literal["error"]
    error: AnthropicErrorObject


class TextDelta(BaseModel):
    type: Literal["text_delta"]
    text: str


class InputJsonDelta(BaseModel):
    type: Literal["input_json_delta"]
    partial_json: str


class MessageDelta(BaseModel):
    stop_reason: StopReason | None
    stop_sequence: str | None


class MessageStreamData(BaseModel):
    """What one server-sent event of a streamed message carries; which fields it has follows from its type: message_start (message), content_block_start (index, content_block), content_block_delta
    (index, delta), content_block_stop (index), message_delta (delta, usage), ping and message_stop (none), error
    (error: a failure after the stream began)."""

    type: Literal["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
                  "message_delta", "message_stop", "error"]
    message: AnthropicMessage | None = None
    index: int | None = None
    content_block: Annotated[TextContent | ToolUseContent, Field(discriminator="type")] | None = None
    delta: Annotated[TextDelta | InputJsonDelta, Field(discriminator="type")] | MessageDelta | None = None
    usage: MessageUsage | None = None
    error: AnthropicErrorObject | None = None


class MessageStreamEvent(BaseModel):
    """One server-sent event of a streamed message (`"stream": true`): `event` names its type, `data` is the event
    (JSON); the stream ends with message_stop (no [DONE]), or an `error` event."""

    event: str
    data: Json[MessageStreamData]
