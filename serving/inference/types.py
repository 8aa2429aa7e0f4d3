"""The inference layer's vocabulary: what a request asks for, the events a generation yields, what a model says
about itself, and the domain errors the API layer maps to HTTP once.

Nothing here knows HTTP or any wire format: every wire API (OpenAI chat, text completions, later others) parses
into a `GenerateRequest` and renders the same events.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


# ---------------------------------------------------------------- requests


@dataclass
class SamplingParams:
    """How to sample one sequence. In a request, None means the model's serving default (the spec's
    `serve.defaults`; max_tokens: also capped by the room left in the context); the local model resolves every
    value before an engine sees it."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    # Tokens that end the sequence ("stop") besides the engine's own end of sequence: set by the local model (e.g.
    # fill-in-the-middle's end tokens), never by a wire API
    stop_tokens: tuple[int, ...] = ()
    # An llguidance grammar (the JSON form `llguidance.LLMatcher.grammar_from_*` returns) every token must keep the
    # sequence inside; set by the local model from a request's output format or forced tool call, never by a wire
    # API directly
    grammar: str | None = None


@dataclass
class Tool:
    """A function the model may call: its JSON-schema `parameters` (an object schema)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False


@dataclass
class ToolCall:
    """A call the model made: `arguments` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


@dataclass
class OutputFormat:
    """A constraint on the generated text: `json_object` (any JSON object) or `json_schema` (one that validates
    against `schema`)."""

    type: str  # "json_object" | "json_schema"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool = False


@dataclass
class GenerateRequest:
    """One generation of `n` sequences from chat messages (rendered by the model's template) or a raw prompt.

    Chat messages are OpenAI-shaped dicts: `role` (system, user, assistant, tool), `content` (text); an assistant
    message may carry `tool_calls` ([{"id", "type": "function", "function": {"name", "arguments"}}], arguments a
    JSON text) and a tool message carries `tool_call_id` (and `name` where the wire API gives it). Every wire API
    (OpenAI chat, Responses, Anthropic Messages) translates its own history into this shape.

    `tools` reach the chat template; `tool_choice` is "auto", "none", "required" or a function's name (forced calls
    are grammar-constrained). `suffix`: fill-in-the-middle, with `prompt` as the text before it."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    n: int = 1
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tools: list[Tool] | None = None
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True
    output_format: OutputFormat | None = None
    suffix: str | None = None

    @property
    def input_param(self) -> str:
        """The request field that holds the input, for errors about it."""
        return "messages" if self.messages is not None else "prompt"


@dataclass
class EmbedRequest:
    """Inputs to embed: texts, or token id lists a client tokenized itself (used as given, special tokens
    included); `dimensions`: a shorter vector the model allows (its first values, renormalised)."""

    inputs: list[str] | list[list[int]]
    dimensions: int | None = None
    fields: list[str] | None = None  # the request field each input came from, for errors (default: input[i])

    def field(self, index: int) -> str:
        return self.fields[index] if self.fields else f"input[{index}]"


@dataclass
class Embeddings:
    """One vector per input, in order: a float32 array (inputs × dimensions), and the tokens they took."""

    vectors: Any
    prompt_tokens: int
    ref: str  # the version that embedded them


# ---------------------------------------------------------------- events


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class TokenEvent:
    """Text released for sequence `index` (possibly empty when only a logprob is reported), and how many tokens the
    sequence has generated so far (a stream the client leaves early is still counted up to there). `cached_tokens`:
    how many of the prompt's tokens the model reused from its prefix cache (None: not known)."""

    index: int
    text: str
    logprob: TokenLogprob | None = None
    completion_tokens: int = 0
    cached_tokens: int | None = None


@dataclass
class DoneEvent:
    """Sequence `index` ended: stop (end of sequence or stop string), length, or error. `stop_sequence`: the stop
    string that ended it, where the model knows (Anthropic's Messages API reports it; a remote upstream does not
    say)."""

    index: int
    finish_reason: str
    completion_tokens: int
    error: str | None = None
    cached_tokens: int | None = None
    stop_sequence: str | None = None


@dataclass
class ToolCallEvent:
    """Sequence `index` made a whole tool call (its `call_index`-th). A sequence that made calls ends with
    finish_reason "tool_calls"."""

    index: int
    call_index: int
    call: ToolCall
    completion_tokens: int = 0
    cached_tokens: int | None = None


Event = TokenEvent | ToolCallEvent | DoneEvent


async def queued_events(queue: asyncio.Queue, sequences: int,
                        heartbeat_s: float | None = None) -> AsyncIterator[Event | None]:
    """A request's events from the queue its sequences feed, until each has ended; None every `heartbeat_s` of
    silence (so a server can notice a client that left while nothing happens)."""
    remaining = sequences
    while remaining:
        try:
            event = await asyncio.wait_for(queue.get(), heartbeat_s)
        except TimeoutError:
            yield None
            continue
        remaining -= isinstance(event, DoneEvent)
        yield event


# ---------------------------------------------------------------- models


@dataclass
class ModelInfo:
    """What `/v1/models` shows of one servable id."""

    id: str
    ref: str  # name@version actually served
    name: str
    version: int
    created: float
    aliases: list[str]
    formats: list[str]
    quantization: dict[str, str]
    context_length: int
    engine: str | None
    loaded: bool
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelStats:
    """A loaded model's live counters in this process (/metrics reads `serving.inference.metrics`, every worker's)."""

    ref: str
    loaded_bytes: int
    active: int
    queued: int
    generated_tokens: int
    decode_steps: int


@dataclass
class ReplicaStatus:
    url: str
    state: str  # HEALTHY | UNHEALTHY (a provider's replicas are never NOT_CONFIGURED on their own)
    reason: str | None
    checked_at: float | None  # Unix time of the last check or request outcome; None before the first


@dataclass
class ProviderStatus:
    """What `/v1/providers` shows of one upstream: NOT_CONFIGURED (e.g. its key variable is unset), UNHEALTHY (every
    replica's last check or request failed; `reason` says why), or HEALTHY (at least one replica answers)."""

    name: str
    state: str
    reason: str | None
    models: list[str]  # upstream model ids, served as `name/model`
    replicas: list[ReplicaStatus]
    changed_at: float  # Unix time the state last changed (or the provider was set up)


# ---------------------------------------------------------------- errors


class InferenceError(Exception):
    """Base of the errors the API layer maps to a status and a wire-shaped body."""


class UnknownModel(InferenceError):
    def __init__(self, model_id: str, detail: str = ""):
        super().__init__(f"The model '{model_id}' does not exist" + (f": {detail}" if detail else ""))
        self.model_id = model_id


class InvalidRequest(InferenceError):
    """The request cannot be served by this model as asked (context length, an unsupported parameter...)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class QueueFull(InferenceError):
    def __init__(self, retry_after_s: int = 1, message: str | None = None):
        super().__init__(message or "The server is busy: the request queue for this model is full; retry shortly")
        self.retry_after_s = retry_after_s


class Unavailable(InferenceError):
    """Nothing can be served for this request now: the server cannot serve anything yet (empty or unreadable
    registry, default model failing to load), or a provider is unhealthy or not configured. `retry_after_s`: when
    trying again may help (the provider's next health check); `code`: what the error body's code says."""

    def __init__(self, message: str, retry_after_s: int | None = None, code: str | None = None):
        super().__init__(message)
        self.retry_after_s, self.code = retry_after_s, code


class GenerationFailed(InferenceError):
    """An engine failed while generating this request's sequences (a bug: the server log has the details)."""
