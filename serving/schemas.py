"""Request bodies of the OpenAI endpoints, validated by pydantic; a violation becomes a 400 naming its `param`.

Unknown fields are accepted and ignored, as OpenAI-compatible servers commonly do (clients such as Continue send
their own extras); known OpenAI features this server does not implement are refused with a 400, never ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.errors import APIError, invalid


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(Lenient):
    include_usage: bool = False


Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
MaxTokens = Annotated[int, Field(ge=1)]


class GenerationRequest(Lenient):
    """Fields shared by chat and text completions."""

    model: Annotated[str, Field(min_length=1)]
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1, le=8)] = 1
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(s == "" for s in stops):
            raise invalid("stop sequences must not be empty", param="stop")
        return stops


class ChatCompletionRequest(GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _supported(self) -> "ChatCompletionRequest":
        if self.tools or self.functions:
            raise ValueError("tools: tool and function calling are not supported by this server")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ValueError("response_format: only {'type': 'text'} is supported")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs: true")
        return self


class CompletionRequest(GenerationRequest):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    max_tokens: MaxTokens = 16  # OpenAI's default for /v1/completions
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _supported(self) -> "CompletionRequest":
        if self.echo:
            raise ValueError("echo: not supported by this server")
        if self.suffix:
            raise ValueError("suffix: insertion (fill-in-the-middle) is not supported by this server")
        if self.best_of not in (None, 1):
            raise ValueError("best_of: only 1 is supported")
        return self


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a request body; the first problem becomes a 400 whose `param` names the field."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(p) for p in error["loc"] if not str(p).startswith(("function-", "list[", "str", "int"))]
        message = error["msg"].removeprefix("Value error, ")
        param, colon, rest = message.partition(": ")
        if not loc and colon and " " not in param:  # model-level checks phrase themselves as "field: reason"
            return _raise(rest, param)
        path = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".") or None
        return _raise(f"{path}: {message}" if path else message, path)


def _raise(message: str, param: str | None) -> Any:
    raise APIError(400, message, param=param)


@dataclass
class SamplingParams:
    """What an engine needs to generate one sequence."""

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None


class Hyperparameters(Lenient):
    """OpenAI's fine-tuning hyperparameters ("auto" allowed), plus this server's own: method, iters, rank..."""

    n_epochs: Annotated[int, Field(ge=1, le=100)] | Literal["auto"] | None = None
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] | None = None
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] | Literal["auto"] | None = None
    method: Literal["lora", "dora", "qlora", "full"] | None = None
    iters: Annotated[int, Field(ge=1, le=100_000)] | None = None
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    rank: Annotated[int, Field(ge=1, le=1024)] | None = None
    layers: Annotated[int, Field(ge=1)] | None = None


class FineTuningJobRequest(Lenient):
    model: Annotated[str, Field(min_length=1)]
    training_file: Annotated[str, Field(min_length=1)]
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: dict[str, Any] | None = None  # OpenAI's newer {"type": "supervised", "supervised": {"hyperparameters"}}
    suffix: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")] | None = None
    seed: int | None = None
    probes: list[dict[str, Any]] | None = None  # [{"messages": [...], "expect": {...}}]: exact-match before/after
    min_valid_loss_drop: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _checks(self) -> "FineTuningJobRequest":
        from factory.spec import Probe

        if self.method and self.method.get("type") not in (None, "supervised"):
            raise ValueError("method: only supervised fine-tuning is supported")
        for probe in self.probes or []:
            Probe.model_validate(probe)
        return self

    def resolved_hyperparameters(self) -> dict[str, Any]:
        nested = ((self.method or {}).get("supervised") or {}).get("hyperparameters") or {}
        merged = {**Hyperparameters.model_validate(nested).model_dump(exclude_none=True),
                  **(self.hyperparameters.model_dump(exclude_none=True) if self.hyperparameters else {})}
        return merged
