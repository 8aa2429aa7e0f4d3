"""The Responses API's response bodies exactly as serving/api/render/responses_api.py writes them, for the OpenAPI
document and the tests that hold the renderer to it (the same rule as serving/api/schemas/responses.py: a field
always written is required, no other field is allowed)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, Json

from serving.api.schemas.responses import Count, ErrorBody, Shape

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputText(Shape):
    type: Literal["output_text"]
    text: str
    annotations: Annotated[list[Any], Field(max_length=0)]


class OutputMessage(Shape):
    id: str
    type: Literal["message"]
    status: ItemStatus
    role: Literal["assistant"]
    content: list[OutputText]


class FunctionCall(Shape):
    id: str
    type: Literal["function_call"]
    status: ItemStatus
    call_id: str
    name: str
    arguments: str = Field(description="a JSON text (empty while in progress)")


OutputItem = Annotated[OutputMessage | FunctionCall, Field(discriminator="type")]


class InputTokensDetails(Shape):
    cached_tokens: Count
    cache_write_tokens: Count


class OutputTokensDetails(Shape):
    reasoning_tokens: Count


class ResponseUsage(Shape):
    input_tokens: Count
    input_tokens_details: InputTokensDetails
    output_tokens: Count
    output_tokens_details: OutputTokensDetails
    total_tokens: Count


class FunctionToolEcho(Shape):
    type: Literal["function"]
    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool


class TextFormatEcho(Shape):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextEcho(Shape):
    format: TextFormatEcho


class ResponseError(Shape):
    code: str
    message: str


class IncompleteDetails(Shape):
    reason: Literal["max_output_tokens"]


class Reasoning(Shape):
    effort: str | None = Field(description="always null: no model here reasons apart from its answer")
    summary: str | None


class ChosenFunction(Shape):
    type: Literal["function"]
    name: str


class ResponseObject(Shape):
    id: str = Field(description="resp_...")
    object: Literal["response"]
    created_at: Count
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    completed_at: Count | None
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: Reasoning
    store: bool
    temperature: float | None = Field(description="null: the model's serving default")
    text: TextEcho
    tool_choice: Literal["none", "auto", "required"] | ChosenFunction
    tools: list[FunctionToolEcho]
    top_p: float | None
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]


class ResponseDeleted(Shape):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


# ---------------------------------------------------------------- stream events


class Event(Shape):
    sequence_number: Count


class LifecycleEvent(Event):
    type: Literal["response.created", "response.in_progress", "response.completed", "response.incomplete",
                  "response.failed"]
    response: ResponseObject


class ItemEvent(Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: Count
    item: OutputItem


class PartEvent(Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: Count
    content_index: Count
    part: OutputText


class TextDeltaEvent(Event):
    type: Literal["response.output_text.delta"]
    item_id: str
    output_index: Count
    content_index: Count
    delta: str
    logprobs: Annotated[list[Any], Field(max_length=0)]


class TextDoneEvent(Event):
    type: Literal["response.output_text.done"]
    item_id: str
    output_index: Count
    content_index: Count
    text: str
    logprobs: Annotated[list[Any], Field(max_length=0)]


class ArgumentsDeltaEvent(Event):
    type: Literal["response.function_call_arguments.delta"]
    item_id: str
    output_index: Count
    delta: str


class ArgumentsDoneEvent(Event):
    type: Literal["response.function_call_arguments.done"]
    item_id: str
    output_index: Count
    arguments: str


class ErrorEvent(Event):
    type: Literal["error"]
    code: str
    message: str
    param: str | None


StreamEvent = Annotated[LifecycleEvent | ItemEvent | PartEvent | TextDeltaEvent | TextDoneEvent
                        | ArgumentsDeltaEvent | ArgumentsDoneEvent | ErrorEvent, Field(discriminator="type")]


class ResponseStreamEvent(BaseModel):
    """One server-sent event of a streamed response (`"stream": true`): `event` names its type, `data` is the
    event (JSON); the stream ends with response.completed, response.incomplete or response.failed (no [DONE])."""

    event: str
    data: Json[StreamEvent | ErrorBody]
