"""Response bodies as the renderers write them (serving/api/render/openai.py, the resources' `*_object` functions,
factory.files' `StoredFile.openai`), for the OpenAPI document.

They are exact: a field a renderer always writes is required, a field it writes sometimes is optional, and no other
field is allowed, so tests/serving/api/test_openapi.py (renderer output validated against these models, in-process)
and the schemathesis run against a live server (tests/serving/test_openapi.py) both fail when a renderer and its
model drift apart. Renderers build plain dicts on the hot path (a chunk per token); these models are what those
dicts are checked against.

Streams are described per server-sent event, as OpenAPI 3.2's `itemSchema` does and schemathesis reads a 3.1
`text/event-stream` schema: each event's `data` is a JSON chunk, an error, or the closing `[DONE]`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Json

Count = Annotated[int, Field(ge=0)]
Timestamp = Annotated[int, Field(ge=0, description="Unix time, seconds")]
FinishReason = Literal["stop", "length"]
ChatFinishReason = Literal["stop", "length", "tool_calls"]  # tool_calls: the choice ended with calls to make


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- errors


class ErrorDetail(Shape):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, "
                                  "rate_limit_error, server_error...")
    param: str | None = Field(description="the request field at fault, as the client wrote it: messages[0].role")
    code: str | None = Field(description="a stable identifier: model_not_found, context_length_exceeded, "
                                         "queue_full, request_too_large...")


class ErrorBody(Shape):
    """Every refusal, in OpenAI's shape."""

    error: ErrorDetail


# ---------------------------------------------------------------- chat and text completions


class PromptTokensDetails(Shape):
    cached_tokens: Count = Field(description="prompt tokens whose KV state the model reused from its prefix cache "
                                             "(a prompt sharing a prefix with an earlier one)")


class Usage(Shape):
    prompt_tokens: Count
    completion_tokens: Count
    total_tokens: Count
    prompt_tokens_details: PromptTokensDetails


class TopLogprob(Shape):
    token: str
    logprob: float
    bytes: list[Annotated[int, Field(ge=0, le=255)]]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Shape):
    content: list[TokenLogprob]


class CalledFunction(Shape):
    name: str
    arguments: str = Field(description="the arguments object as a JSON text")


class MessageToolCall(Shape):
    id: str = Field(description="call_<random>: what a `tool` message's tool_call_id answers")
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(Shape):
    role: Literal["assistant"]
    content: str | None = Field(description="null when the answer is only tool calls")
    tool_calls: list[MessageToolCall] | None = Field(None, description="present when the model called tools")


class ChatChoice(Shape):
    index: Count
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: ChatFinishReason


class ChatCompletion(Shape):
    id: str
    object: Literal["chat.completion"]
    created: Timestamp
    model: str
    system_fingerprint: str = Field(description="the registry version that answered: name@N")
    choices: list[ChatChoice]
    usage: Usage


class ChunkToolCall(Shape):
    index: Count = Field(description="the call's place among the choice's calls")
    id: str
    type: Literal["function"]
    function: CalledFunction


class ChunkDelta(Shape):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = Field(None, description="a whole call per chunk (its arguments in one "
                                                                     "piece)")


class ChatChunkChoice(Shape):
    index: Count
    delta: ChunkDelta
    logprobs: ChatLogprobs | None
    finish_reason: ChatFinishReason | None


class ChatCompletionChunk(Shape):
    id: str
    object: Literal["chat.completion.chunk"]
    created: Timestamp
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, description="with stream_options.include_usage: null, and the totals in a "
                                                  "last chunk whose choices are empty")


class CompletionLogprobs(Shape):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[Count]


class CompletionChoice(Shape):
    index: Count
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason


class Completion(Shape):
    id: str
    object: Literal["text_completion"]
    created: Timestamp
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunkChoice(CompletionChoice):
    finish_reason: FinishReason | None


class CompletionChunk(Shape):
    id: str
    object: Literal["text_completion"]
    created: Timestamp
    model: str
    system_fingerprint: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


Done = Literal["[DONE]"]


class ChatCompletionEvent(BaseModel):
    """One server-sent event of a streamed chat completion (`"stream": true`)."""

    data: Json[ChatCompletionChunk | ErrorBody] | Done


class CompletionEvent(BaseModel):
    """One server-sent event of a streamed text completion (`"stream": true`)."""

    data: Json[CompletionChunk | ErrorBody] | Done


# ---------------------------------------------------------------- models, files, fine-tuning


class ModelEmbedding(Shape):
    dimensions: int
    allowed_dimensions: list[int] = Field(description="what a request's `dimensions` may ask for")
    pooling: Literal["mean", "cls", "last"]
    normalized: bool
    max_input_tokens: int
    max_inputs: int = Field(description="inputs in one request")


ProviderState = Literal["NOT_CONFIGURED", "UNHEALTHY", "HEALTHY"]
Capability = Literal["chat", "completions", "tools", "structured_outputs", "fim", "embeddings", "rerank"]


class Model(Shape):
    id: str
    object: Literal["model"]
    created: Timestamp
    owned_by: str = Field(description="llm-factory for a registry model, else the provider's name")
    ref: str = Field(description="the registry version this id serves: name@N (a provider's model: its id)")
    version: int = Field(description="the registry version's number (0 for a provider's model)")
    aliases: list[str]
    formats: list[str]
    quantization: dict[str, str]
    context_length: int = Field(description="tokens of context (0: a provider that does not say)")
    engine: str | None = Field(description="the engine serving it on this host (none: no artifact fits; `remote`: "
                                           "a provider's model)")
    loaded: bool
    state: ProviderState | None = Field(None, description="a provider's model: the provider's health")
    parent: str | None = Field(None, description="a fine-tune's base model")
    task: Literal["chat", "embedding"] = Field(description="chat (and completions), or embedding (/v1/embeddings, "
                                                           "/v1/rerank)")
    embedding: ModelEmbedding | None = Field(None, description="an embedding model's vectors and limits")
    capabilities: list[Capability] = Field(description="what it serves: chat, completions, tools, structured_outputs "
                                                       "and fim (fill-in-the-middle: `suffix` on /v1/completions) for "
                                                       "a chat model; embeddings and rerank for an embedding model")
    tool_template: Literal["native", "fallback"] | None = Field(
        None, description="a local chat model: whether its chat template renders tools itself (native) or the "
                          "server's tool prompt describes them (fallback); either way it takes tools")


class ModelList(Shape):
    object: Literal["list"]
    data: list[Model]


class File(Shape):
    id: str
    object: Literal["file"]
    bytes: Count
    created_at: Timestamp
    filename: str
    purpose: Literal["fine-tune"]
    status: Literal["processed"]


class FileList(Shape):
    object: Literal["list"]
    data: list[File]
    has_more: bool


class FileDeleted(Shape):
    id: str
    object: Literal["file"]
    deleted: Literal[True]


class FileUpload(BaseModel):
    """A multipart/form-data upload: JSONL training data, one chat example per line, checked line by line."""

    file: bytes
    purpose: Literal["fine-tune"]


class JobError(Shape):
    code: str
    message: str
    param: str | None


class FineTuningJob(Shape):
    id: str
    object: Literal["fine_tuning.job"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model: str | None
    created_at: Timestamp | None
    finished_at: Timestamp | None
    fine_tuned_model: str | None = Field(description="the registry version the job published: name@N")
    training_file: str | None
    validation_file: str | None
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int | None
    trained_tokens: Count | None
    organization_id: str
    result_files: list[str]
    estimated_finish: Timestamp | None
    integrations: list[dict[str, Any]]
    error: JobError | None


class FineTuningJobList(Shape):
    object: Literal["list"]
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(Shape):
    id: str
    object: Literal["fine_tuning.job.event"]
    created_at: Timestamp
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = Field(description="training metrics, for a step's loss line")
    type: Literal["message", "metrics"]


class FineTuningJobEventList(Shape):
    object: Literal["list"]
    data: list[FineTuningJobEvent]
    has_more: bool


class Replica(Shape):
    url: str = Field(description="the replica's base URL")
    state: Literal["UNHEALTHY", "HEALTHY"]
    reason: str | None = Field(description="why its last check or request failed")
    checked_at: Timestamp | None = Field(description="its last check or failed request (none: not checked yet)")


class Provider(Shape):
    object: Literal["provider"]
    name: str
    state: ProviderState = Field(description="NOT_CONFIGURED (e.g. its key variable is unset), UNHEALTHY (no "
                                             "replica answers; requests get 503 with Retry-After), HEALTHY")
    reason: str | None = Field(description="why it is not HEALTHY")
    models: list[str] = Field(description="the ids it serves here: provider/model")
    changed_at: Timestamp = Field(description="when its state last changed")
    replicas: list[Replica]


class ProviderList(Shape):
    object: Literal["list"]
    data: list[Provider]


# ---------------------------------------------------------------- probes


class Health(Shape):
    status: Literal["ok"]


class Ready(Shape):
    status: Literal["ready"]
    default_model: str
    version: str


class NotReady(Shape):
    status: Literal["unavailable"]
    reason: str
