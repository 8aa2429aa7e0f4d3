"""Anthropic's Messages API request bodies (POST /v1/messages and /v1/messages/count_tokens), validated and
translated into the inference layer's OpenAI-shaped `GenerateRequest`:

    system (text or text blocks)        -> a system message
    user text blocks                    -> a user message
    user tool_result blocks             -> tool messages (tool_call_id = tool_use_id), before the user's text
    assistant text and tool_use blocks  -> an assistant message with tool_calls (arguments: the input as JSON text)
    tool_choice auto | any | tool | none -> "auto" | "required" | the tool's name | "none"

Unknown fields (`metadata`, `cache_control` on blocks, ...) are ignored. What this server cannot do is refused with a
400 in words, never ignored: image and document blocks, thinking, server tools, and `top_k` (the engines sample
with temperature and top_p only).
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from serving.api.schemas import Lenient
from serving.api.schemas.openai import MAX_MESSAGES, MAX_NAME, MAX_STOP, MAX_STOPS, MAX_TEXT, MAX_TOKENS, MAX_TOOLS
from serving.inference.types import GenerateRequest, OutputFormat, SamplingParams, Tool

BLOCKS = "text, tool_use and tool_result"
ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$", description="Anthropic's tool name rule")]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


def known_block(value: Any) -> Any:
    """Name what is refused before pydantic tries every block type and reports the wrong one."""
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, str) and kind not in ("text", "tool_use", "tool_result"):
        what = "image input" if kind == "image" else f"{kind!r} content blocks"
        raise ValueError(f"{what} is not supported by this server (it takes {BLOCKS} blocks)")
    return value


class TextBlock(Lenient):
    type: Literal["text"]
    text: Text


ResultBlock = Annotated[TextBlock, BeforeValidator(known_block)]


class ToolUseBlock(Lenient):
    type: Literal["tool_use"]
    id: Id
    name: ToolName
    input: dict[str, Any]


class ToolResultBlock(Lenient):
    type: Literal["tool_result"]
    tool_use_id: Id
    content: Text | Annotated[list[ResultBlock], Field(max_length=MAX_MESSAGES)] = ""
    is_error: bool = False

    def text(self) -> str:
        text = self.content if isinstance(self.content, str) else "".join(block.text for block in self.content)
        # OpenAI-shaped history has no error flag: the model reads it in the result's words
        return f"Error: {text}" if self.is_error else text


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type"),
                  BeforeValidator(known_block)]


class InputMessage(Lenient):
    role: Literal["user", "assistant"]
    content: Text | Annotated[list[Block], Field(max_length=MAX_MESSAGES)]

    @model_validator(mode="after")
    def _blocks_fit_role(self) -> "InputMessage":
        kinds = {block.type for block in self.blocks()}
        if self.role == "user" and "tool_use" in kinds:
            raise ValueError("tool_use blocks belong to assistant messages")
        if self.role == "assistant" and "tool_result" in kinds:
            raise ValueError("tool_result blocks belong to user messages")
        return self

    def blocks(self) -> list[TextBlock | ToolUseBlock | ToolResultBlock]:
        return [TextBlock(type="text", text=self.content)] if isinstance(self.content, str) else self.content

    def inference(self) -> list[dict[str, Any]]:
        """The message as the inference layer's history takes it: tool results become tool messages."""
        blocks = self.blocks()
        text = "".join(block.text for block in blocks if isinstance(block, TextBlock))
        if self.role == "assistant":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            calls = [{"id": block.id, "type": "function", "function": {
                "name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}}
                for block in blocks if isinstance(block, ToolUseBlock)]
            return [message | {"tool_calls": calls}] if calls else [message]
        results = [{"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()}
                   for block in blocks if isinstance(block, ToolResultBlock)]
        return results + ([{"role": "user", "content": text}] if text or not results else [])


def custom_tool(value: Any) -> Any:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in (None, "custom"):
        raise ValueError(f"server tools ({kind!r}) are not supported by this server: only custom tools "
                         f"({{name, description, input_schema}})")
    return value


class InputSchema(Lenient):
    type: Literal["object"]

    model_config = {"extra": "allow"}  # the whole JSON schema is the tool's parameters


class ToolDefinition(Lenient):
    name: ToolName
    description: Text | None = None
    input_schema: InputSchema


class ToolChoice(Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: ToolName | None = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _named(self) -> "ToolChoice":
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("a tool choice names its tool exactly when its type is 'tool'")
        return self


def disabled_thinking(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") not in (None, "disabled"):
        raise ValueError("extended thinking is not supported by this server")
    return value


class MessagesInput(Lenient):
    """What count_tokens and create share: the model and everything that becomes its prompt."""

    model: Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
    messages: Annotated[list[InputMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    system: Text | Annotated[list[ResultBlock], Field(max_length=MAX_MESSAGES)] | None = None
    tools: Annotated[list[Annotated[ToolDefinition, BeforeValidator(custom_tool)]],
                     Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Annotated[dict[str, Any] | None, BeforeValidator(disabled_thinking)] = None

    @model_validator(mode="after")
    def _tools_agree(self) -> "MessagesInput":
        names = [tool.name for tool in self.tools or []]
        if len(set(names)) < len(names):
            raise ValueError("tools: tool names must be unique")
        choice = self.tool_choice
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice: the tool {choice.name!r} is not in tools")
        if choice is not None and choice.type == "any" and not names:
            raise ValueError("tool_choice: 'any' needs tools")
        return self

    def generate_request(self, sampling: SamplingParams | None = None) -> GenerateRequest:
        system = self.system if isinstance(self.system, str) or self.system is None else \
            "\n\n".join(block.text for block in self.system)
        history = [{"role": "system", "content": system}] if system else []
        history += [message for turn in self.messages for message in turn.inference()]
        choice = self.tool_choice or ToolChoice(type="auto")
        tools = [Tool(tool.name, tool.description, tool.input_schema.model_dump()) for tool in self.tools or []]
        return GenerateRequest(
            messages=history, sampling=sampling or SamplingParams(), tools=tools or None,
            tool_choice=choice.name if choice.type == "tool" else {"any": "required"}.get(choice.type, choice.type),
            parallel_tool_calls=not choice.disable_parallel_tool_use)


Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP)]


def no_top_k(value: Any) -> Any:
    if value is not None:
        raise ValueError("top_k is not supported by this server's engines (use temperature or top_p)")
    return value


class JsonOutputFormat(Lenient):
    type: Literal["json_schema"]
    schema_: Annotated[dict[str, Any], Field(alias="schema")]


class OutputConfig(Lenient):
    """Structured output (`format`); `effort` steers extended thinking, which no model here has: ignored."""

    format: JsonOutputFormat | None = None
    effort: str | None = None


class CreateMessage(MessagesInput):
    """POST /v1/messages."""

    model_config = {"json_schema_extra": {"examples": [
        {"model": "default", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello."}]}]}}

    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)]
    stop_sequences: Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int | None, BeforeValidator(no_top_k)] = None
    stream: bool = False
    output_config: OutputConfig | None = None

    @model_validator(mode="after")
    def _no_prefill(self) -> "CreateMessage":
        if self.messages[-1].role == "assistant":
            raise ValueError("messages: a final assistant message (prefill) is not supported by this server")
        return self

    def generate_request(self, sampling: SamplingParams | None = None) -> GenerateRequest:
        request = super().generate_request(SamplingParams(
            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
            stop=list(self.stop_sequences or [])))
        wanted = self.output_config.format if self.output_config else None
        request.output_format = OutputFormat("json_schema", wanted.schema_, "output") if wanted else None
        return request


class CountTokens(MessagesInput):
    """POST /v1/messages/count_tokens: the prompt `messages` would make, counted by the model's own tokenizer."""

    model_config = {"json_schema_extra": {"examples": [
        {"model": "default", "messages": [{"role": "user", "content": "Say hello."}]}]}}
