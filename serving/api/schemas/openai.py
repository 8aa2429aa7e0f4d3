"""OpenAI chat and text completion request bodies, and their translation into the inference layer's
`GenerateRequest` (one generation path for every wire API).

Every field is bounded by its type, so bad input is a 400 before anything reaches a model, and the OpenAPI document
(generated from these models) states each bound. Bounds are OpenAI's where it documents one (temperature, top_p,
penalties, logit_bias values, top_logprobs, logprobs, seed); elsewhere they are this server's: `n` (OpenAI
allows 128; a request's sequences share one decode batch here), `stop` (OpenAI allows 4; editors send more) and
sizes far beyond any real request (the context length and the body limit refuse sooner). What this server does
not implement (the legacy `functions`, echo, best_of > 1) is typed as the one value it accepts, and refused in
words. Tools (function tools only, at most OpenAI's 128) and `response_format` (text, json_object, json_schema) reach
the model as the inference layer's `Tool` and `OutputFormat`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from serving.api.schemas import Lenient
from serving.inference.types import GenerateRequest, OutputFormat, SamplingParams, Tool

MAX_TEXT = 1 << 20  # characters in one message or prompt (the body limit, 8 MiB by default, usually comes first)
MAX_MESSAGES = 2048
MAX_NAME = 256  # model ids, participant names
MAX_STOP = 256  # characters in one stop string (matching holds back up to that much text)
MAX_STOPS = 32  # stop strings in one request
MAX_TOKENS = 1 << 20  # no model here has a context this long; each model refuses what exceeds its own
MAX_LOGIT_BIAS = 300  # biased tokens


def unsupported(message: str, *, accepts: Callable[[Any], bool]) -> BeforeValidator:
    """Refuse, with `message`, a value the field's type excludes because this server does not implement it (the
    type says what is accepted; this says why the rest is not)."""
    def check(value: Any) -> Any:
        if not accepts(value):
            raise ValueError(message)
        return value
    return BeforeValidator(check)


Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


class TextPart(Lenient):
    type: Literal["text"]
    text: Text


MAX_TOOLS = 128  # OpenAI's limit on tools in one request
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="OpenAI's function name rule")]


class CalledFunction(Lenient):
    name: FunctionName
    arguments: Annotated[Text, Field(description="the arguments as a JSON text")]


class MessageToolCall(Lenient):
    id: Name
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | Annotated[list[TextPart], Field(max_length=MAX_MESSAGES)] | None = None
    name: Annotated[str, Field(max_length=MAX_NAME)] | None = None
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=MAX_TOOLS,
                                                       description="an assistant message's calls")] | None = None
    tool_call_id: Annotated[Name, Field(description="the call a `tool` message answers")] | None = None

    @model_validator(mode="after")
    def _tool_fields(self) -> "ChatMessage":
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)

    def inference(self) -> dict[str, Any]:
        """The message as the inference layer's history takes it (`GenerateRequest.messages`)."""
        # OpenAI's "developer" role is the system role of models trained before it existed
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [{"id": call.id, "type": "function", "function": {
                "name": call.function.name, "arguments": call.function.arguments}} for call in self.tool_calls]
        if self.role == "tool":
            message["tool_call_id"] = self.tool_call_id
            if self.name:
                message["name"] = self.name
        return message


class FunctionDefinition(Lenient):
    name: FunctionName
    description: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    parameters: Annotated[dict[str, Any], Field(description="a JSON schema of the arguments object")] | None = None
    strict: bool | None = None


class FunctionTool(Lenient):
    type: Annotated[Literal["function"], unsupported("only function tools are supported by this server",
                                                     accepts=lambda value: value == "function")]
    function: FunctionDefinition


class ChosenFunction(Lenient):
    name: FunctionName


class NamedToolChoice(Lenient):
    type: Literal["function"]
    function: ChosenFunction


class StreamOptions(Lenient):
    include_usage: bool = False


class JsonSchemaFormat(Lenient):
    name: FunctionName
    description: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="the JSON schema the answer validates "
                                                                            "against")
    strict: bool | None = None


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self

    def output_format(self) -> OutputFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return OutputFormat("json_object")
        form = self.json_schema
        return OutputFormat("json_schema", schema=form.schema_ or {}, name=form.name, strict=bool(form.strict))


Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP)]
TokenId = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]  # JSON keys are strings; the model checks its vocabulary
Bias = Annotated[float, Field(ge=-100, le=100)]


class GenerationRequest(Lenient):
    """Fields shared by chat and text completions."""

    model: Annotated[Name, Field(examples=["default"], description="a model id from GET /v1/models; `default` "
                                                                   "names the server's default model")]
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    # OpenAI allows 4; editors send more to local servers (Continue's autocomplete: its FIM template's end tokens,
    # blank lines, ``` and the language's stop words), and llama-server and vLLM take them
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None  # 64 bits, signed (OpenAI's) or unsigned
    n: Annotated[int, Field(ge=1, le=8)] = 1
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[TokenId, Bias], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def generate_request(self, *, max_tokens: int | None, logprobs: bool, top_logprobs: int,
                         **prompt: Any) -> GenerateRequest:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        bias = {int(token): value for token, value in (self.logit_bias or {}).items()} or None
        sampling = SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, stop=stops,
                                  seed=self.seed, logprobs=logprobs, top_logprobs=top_logprobs,
                                  presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                                  logit_bias=bias)
        return GenerateRequest(n=self.n, sampling=sampling, **prompt)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


NO_FUNCTIONS = "the legacy `functions` are not supported by this server: send them as `tools`"
Unsupported = Annotated[list[Any], Field(max_length=0)]


class ChatCompletionRequest(GenerationRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "default", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}]})

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20, description="requires logprobs: true")] | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    functions: Annotated[Unsupported | None, unsupported(NO_FUNCTIONS, accepts=lambda value: not value)] = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _supported(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs: true")
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) < len(names):
            raise ValueError("tools: function names must be unique")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice: the function {self.tool_choice.function.name!r} is not in tools")
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice: 'required' needs tools")
        return self

    def generate_request(self) -> GenerateRequest:
        tools = [Tool(tool.function.name, tool.function.description,
                      tool.function.parameters or {"type": "object", "properties": {}}, bool(tool.function.strict))
                 for tool in self.tools or []] or None
        choice = self.tool_choice or "auto"
        request = super().generate_request(messages=[m.inference() for m in self.messages],
                                           max_tokens=self.max_completion_tokens or self.max_tokens,
                                           logprobs=self.logprobs, top_logprobs=self.top_logprobs or 0)
        request.tools, request.parallel_tool_calls = tools, self.parallel_tool_calls
        request.tool_choice = choice.function.name if isinstance(choice, NamedToolChoice) else choice
        request.output_format = self.response_format.output_format() if self.response_format else None
        return request


Prompt = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
ONE_PROMPT = "send one prompt per request (use n for several completions)"


class CompletionRequest(GenerationRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "default", "prompt": "Once upon a time", "max_tokens": 16}]})

    prompt: Annotated[Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=1)],
                      unsupported(ONE_PROMPT, accepts=lambda value: not isinstance(value, list) or len(value) == 1)]
    max_tokens: MaxTokens = 16  # OpenAI's default for /v1/completions
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: Annotated[Literal[False], unsupported("not supported by this server",
                                                accepts=lambda value: value is not True)] = False
    suffix: Annotated[Text | None, Field(description="fill-in-the-middle: the text after the insertion point "
                                                     "(`prompt` is the text before it); needs a model whose "
                                                     "capabilities list `fim`")] = None
    best_of: Annotated[Literal[1] | None, unsupported("only 1 is supported",
                                                      accepts=lambda value: value in (None, 1))] = None

    def generate_request(self) -> GenerateRequest:
        prompt = self.prompt[0] if isinstance(self.prompt, list) else self.prompt
        return super().generate_request(prompt=prompt, suffix=self.suffix, max_tokens=self.max_tokens,
                                        logprobs=self.logprobs is not None, top_logprobs=self.logprobs or 0)
