"""OpenAI's Responses API request body (`POST /v1/responses`), and its translation into the inference layer's
`GenerateRequest`: input items become OpenAI-shaped chat history (a `function_call` item an assistant message's
tool call, a `function_call_output` item a `tool` message), `instructions` a leading system message.

What this server cannot do is refused in words: tools other than functions, image and file inputs, background
responses, conversations, stored prompts, `max_tool_calls`, logprobs. What changes nothing here is accepted and
ignored: `reasoning` (no model here reasons apart from its answer), `include` (there is nothing extra to include),
`truncation`, `user`, `prompt_cache_key`, `service_tier` and other unknown fields.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from serving.api.errors import invalid
from serving.api.schemas import Lenient
from serving.api.schemas.openai import (MAX_MESSAGES, MAX_TEXT, MaxTokens, Name, Temperature, Text, TopP,
                                        unsupported)
from serving.inference.types import GenerateRequest, OutputFormat, SamplingParams, Tool

MAX_TOOLS = 128  # OpenAI's limit on tools in one request
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="OpenAI's function name rule")]
ResponseId = Annotated[str, Field(min_length=1, max_length=128)]
ONLY_TEXT = "only text content (input_text, output_text) is supported by this server"


# ---------------------------------------------------------------- input items


class ContentPart(Lenient):
    type: Annotated[Literal["input_text", "output_text"],
                    unsupported(ONLY_TEXT, accepts=lambda value: value in ("input_text", "output_text"))]
    text: Text


def _item_text(content: str | list[ContentPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


REQUIRED = {"message": ("role", "content"), "function_call": ("call_id", "name", "arguments"),
            "function_call_output": ("call_id", "output"), "reasoning": ()}


class InputItem(Lenient):
    """A message, a function call the model made, a call's output, or a reasoning item. One model rather than a
    union of four, so an error names the field as the client wrote it (`input[0].name`), not a union member."""

    type: Literal["message", "function_call", "function_call_output", "reasoning"]
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: Text | Annotated[list[ContentPart], Field(max_length=MAX_MESSAGES)] | None = None
    call_id: Name | None = None
    name: FunctionName | None = None
    arguments: Annotated[Text, Field(description="the arguments as a JSON text")] | None = None
    output: Text | Annotated[list[ContentPart], Field(max_length=MAX_MESSAGES)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _typed(cls, value: Any) -> Any:
        """An item without `type` but with a `role` is a message (the SDK's EasyInputMessage); a reasoning item
        from another model's answer is nothing a model here can read (often encrypted): only its type is kept."""
        if not isinstance(value, dict):
            return value
        kind = value.get("type", "message" if "role" in value else None)
        if not isinstance(kind, str) or kind not in REQUIRED:
            raise ValueError(f"input items of type {kind!r} are not supported by this server (supported: "
                             f"{', '.join(REQUIRED)})")
        return {"type": kind} if kind == "reasoning" else {**value, "type": kind}

    @model_validator(mode="after")
    def _complete(self) -> "InputItem":
        if missing := [name for name in REQUIRED[self.type] if getattr(self, name) is None]:
            raise ValueError(f"a {self.type} item needs {' and '.join(missing)}")
        return self


def history_item(item: InputItem) -> dict[str, Any]:
    """An input item as stored for `previous_response_id` (the shape output items have, so both read alike)."""
    if item.type == "message":
        kind = "output_text" if item.role == "assistant" else "input_text"
        return {"type": "message", "role": item.role, "content": [{"type": kind, "text": _item_text(item.content)}]}
    if item.type == "function_call":
        return {"type": "function_call", "call_id": item.call_id, "name": item.name, "arguments": item.arguments}
    return {"type": "function_call_output", "call_id": item.call_id, "output": _item_text(item.output)}


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored-shape items as the inference layer's chat history. Calls in a row join one assistant message (the
    text before them included), as a chat model made them; an output names its call's function where known."""
    messages: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for item in items:
        if item["type"] == "message":
            text = "".join(part.get("text", "") for part in item["content"])
            # OpenAI's "developer" role is the system role of models trained before it existed
            messages.append({"role": "system" if item["role"] == "developer" else item["role"], "content": text})
        elif item["type"] == "function_call":
            names[item["call_id"]] = item["name"]
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            message = {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
            if item["call_id"] in names:
                message["name"] = names[item["call_id"]]
            messages.append(message)
    return messages


# ---------------------------------------------------------------- tools and text format


class FunctionToolDef(Lenient):
    type: Annotated[Literal["function"], unsupported("only function tools are supported by this server",
                                                     accepts=lambda value: value == "function")]
    name: FunctionName
    description: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    parameters: Annotated[dict[str, Any], Field(description="a JSON schema of the arguments object")] | None = None
    strict: Annotated[bool, Field(description="OpenAI's default: true (unsupported schema keywords are "
                                              "errors rather than ignored)")] = True

    def echo(self) -> dict[str, Any]:
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters, "strict": self.strict}


class ToolChoiceFunction(Lenient):
    type: Annotated[Literal["function"], unsupported("only function tool choices are supported by this server",
                                                     accepts=lambda value: value == "function")]
    name: FunctionName


class TextFormat(Lenient):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: FunctionName | None = None
    description: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="json_schema: what the answer "
                                                                            "validates against")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "TextFormat":
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("type json_schema needs a name and a schema")
        return self

    def echo(self) -> dict[str, Any]:
        if self.type != "json_schema":
            return {"type": self.type}
        return {"type": "json_schema", "name": self.name, "schema": self.schema_, "description": self.description,
                "strict": self.strict}


class TextConfig(Lenient):
    format: TextFormat = TextFormat()


def _never(message: str):
    return unsupported(message, accepts=lambda value: value in (None, False, 0))


# ---------------------------------------------------------------- the request


class CreateResponse(Lenient):
    model: Annotated[Name, Field(examples=["default"], description="a model id from GET /v1/models")]
    input: Text | Annotated[list[InputItem], Field(max_length=MAX_MESSAGES)]
    instructions: Text | None = Field(None, description="a system message before the input; not carried over "
                                                        "to a response that continues this one")
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool = False
    tools: Annotated[list[FunctionToolDef], Field(max_length=MAX_TOOLS)] = []
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig = TextConfig()
    store: bool = Field(True, description="keep the response for GET, DELETE and previous_response_id")
    previous_response_id: ResponseId | None = Field(None, description="continue from a stored response: its input "
                                                                      "and output come before this input")
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None
    reasoning: dict[str, Any] | None = Field(None, description="accepted and ignored")
    include: Annotated[list[Annotated[str, Field(max_length=MAX_TEXT)]], Field(max_length=64)] | None = Field(
        None, description="accepted and ignored: nothing extra to include")
    truncation: Literal["auto", "disabled"] | None = None
    background: Annotated[bool | None, _never("background responses are not supported by this server")] = None
    conversation: Annotated[Any, _never("conversations are not supported by this server: continue with "
                                        "previous_response_id")] = None
    prompt: Annotated[Any, _never("stored prompts are not supported by this server")] = None
    max_tool_calls: Annotated[int | None, _never("max_tool_calls is not supported by this server")] = None
    top_logprobs: Annotated[int | None, _never("logprobs are not supported by /v1/responses on this server")] = None

    @model_validator(mode="after")
    def _tools_agree(self) -> "CreateResponse":
        names = [tool.name for tool in self.tools]
        if len(set(names)) < len(names):
            raise ValueError("tools: function names must be unique")
        if isinstance(self.tool_choice, ToolChoiceFunction) and self.tool_choice.name not in names:
            raise ValueError(f"tool_choice: the function {self.tool_choice.name!r} is not in tools")
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice: 'required' needs tools")
        return self

    def input_items(self) -> list[dict[str, Any]]:
        """This request's input in the stored shape (reasoning items dropped)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": self.input}]}]
        return [history_item(item) for item in self.input if item.type != "reasoning"]

    def generate_request(self, items: list[dict[str, Any]]) -> GenerateRequest:
        """`items`: the whole conversation in the stored shape (a previous response's input and output first)."""
        messages = chat_messages(items)
        if self.instructions is not None:
            messages.insert(0, {"role": "system", "content": self.instructions})
        if not messages:  # a chat template renders no empty conversation
            raise invalid("input: there is nothing to answer: no message, call or output (reasoning items are "
                          "dropped)", param="input")
        tools = [Tool(t.name, t.description, t.parameters or {"type": "object", "properties": {}}, t.strict)
                 for t in self.tools] or None
        form = self.text.format
        output_format = None if form.type == "text" else OutputFormat(
            form.type, schema=form.schema_, name=form.name, strict=bool(form.strict))
        choice = self.tool_choice
        return GenerateRequest(
            messages=messages, tools=tools, parallel_tool_calls=self.parallel_tool_calls, output_format=output_format,
            tool_choice=choice.name if isinstance(choice, ToolChoiceFunction) else choice,
            sampling=SamplingParams(max_tokens=self.max_output_tokens, temperature=self.temperature, top_p=self.top_p))

    def tool_choice_echo(self) -> str | dict[str, Any]:
        choice = self.tool_choice
        return {"type": "function", "name": choice.name} if isinstance(choice, ToolChoiceFunction) else choice
