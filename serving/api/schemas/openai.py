"""OpenAI chat and text completion request bodies, and their translation into the inference layer's
`GenerateRequest` (one generation path for every wire API)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from serving.api.errors import invalid
from serving.api.schemas import Lenient
from serving.inference.types import GenerateRequest, SamplingParams


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
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None  # OpenAI's seeds are 64-bit
    n: Annotated[int, Field(ge=1, le=8)] = 1
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def generate_request(self, *, max_tokens: int | None, logprobs: bool, top_logprobs: int,
                         **prompt: Any) -> GenerateRequest:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(s == "" for s in stops):
            raise invalid("stop sequences must not be empty", param="stop")
        try:
            bias = {int(token): value for token, value in (self.logit_bias or {}).items()} or None
        except ValueError:
            raise invalid("logit_bias keys must be token ids", param="logit_bias") from None
        sampling = SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, stop=stops,
                                  seed=self.seed, logprobs=logprobs, top_logprobs=top_logprobs,
                                  presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                                  logit_bias=bias)
        return GenerateRequest(n=self.n, sampling=sampling, **prompt)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


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

    def generate_request(self) -> GenerateRequest:
        # OpenAI's "developer" role is the system role of models trained before it existed
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in self.messages]
        return super().generate_request(messages=messages, max_tokens=self.max_completion_tokens or self.max_tokens,
                                        logprobs=self.logprobs, top_logprobs=self.top_logprobs or 0)


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
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: send one prompt per request (use n for several completions)")
        return self

    def generate_request(self) -> GenerateRequest:
        prompt = self.prompt[0] if isinstance(self.prompt, list) else self.prompt
        return super().generate_request(prompt=prompt, max_tokens=self.max_tokens,
                                        logprobs=self.logprobs is not None, top_logprobs=self.logprobs or 0)
