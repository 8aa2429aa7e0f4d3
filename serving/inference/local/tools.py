"""Tools on a local model: how a request's tools and tool history reach the prompt, and how a forced call is
constrained, per the chat template's tool-call family.

The family is read from the template's own text:

- `hermes` (Qwen 2/2.5/3, Hermes, SmolLM3 and most templates that render `tools`): calls are
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (a JSON list inside the tags is read too: SmolLM2's
  tool-trained checkpoints write one);
- `llama3` (templates with `<|python_tag|>` or `"parameters"` in their tool prompt): a whole message that is
  `{"name": ..., "parameters": {...}}` (after `<|python_tag|>` when the model writes it);
- `mistral` (`[TOOL_CALLS]`): `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`;
- `fallback`: a template that does not mention tools (SmolLM2-135M's, the tiny test model's). The tool definitions
  become a system text in the Hermes style asking for `<tool_call>` JSON, assistant calls in the history become that
  markup in the message text, and tool results become user messages inside `<tool_response>` tags, so any template
  renders them as ordinary text.

Templates that render tools get them as `tools=[{"type": "function", "function": {...}}]`, and the history's calls as
`tool_calls` with `arguments` as an object (what HF templates expect). Text that the template turns into markup is
tokenized with control tokens, so client text in tool definitions or call arguments that holds a control token's
text is refused on that path (`prompts.py` keeps message contents safe on every path).

A forced call (tool_choice "required" or a function's name) is constrained by a Lark grammar: the family's markup
around JSON that validates against {"name": that function, "arguments": its parameters}; up to
`MAX_PARALLEL_CALLS` calls when parallel calls are allowed, else exactly one.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.inference.local.capabilities import TOOLS_IN_TEMPLATE
from serving.inference.local.constraints import JSON_STYLE, json_object_grammar, json_schema_grammar, lark_grammar
from serving.inference.local.engines.base import Engine
from serving.inference.types import GenerateRequest, InvalidRequest, Tool

MAX_PARALLEL_CALLS = 8  # calls one forced answer may hold: a weak model could otherwise repeat calls to max_tokens

FALLBACK_SYSTEM = (
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> XML "
    "tags. You may call one or more functions to assist with the user query. Don't make assumptions about what "
    "values to plug into functions. Here are the available tools:\n<tools>\n{tools}\n</tools>\n"
    "For each function call, return a json object with the function name and arguments within <tool_call></tool_call> "
    "XML tags as follows:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
)


def family_of(template: str) -> str:
    """The tool-call family of a chat template's source text."""
    if "[TOOL_CALLS]" in template:
        return "mistral"
    renders_tools = TOOLS_IN_TEMPLATE.search(template) is not None  # what /v1/models calls `native`
    if "<|python_tag|>" in template or (renders_tools and '"parameters"' in template):
        return "llama3"
    return "hermes" if renders_tools else "fallback"


@dataclass
class ToolPlan:
    """What one request's tools mean for its prompt and output on this model."""

    family: str
    messages: list[dict[str, Any]] | None  # the history as the template (or the fallback) takes it
    render: Callable[[list[dict[str, Any]]], str] | None  # renders messages (placeholders included); None: default
    parse: bool  # read tool calls out of the generated text
    grammar: str | None  # the forced call's or the output format's grammar


def plan(engine: Engine, request: GenerateRequest) -> ToolPlan:
    family = family_of(engine.chat_template)
    offered = bool(request.tools) and request.tool_choice != "none"
    messages = request.messages
    render = None
    if messages is not None:
        if family == "fallback":
            messages = fallback_messages(messages, request.tools if offered else None)
        else:
            messages = template_messages(messages)
            wire_tools = [openai_tool(tool) for tool in request.tools] if offered else None
            refuse_control_text(engine, messages, wire_tools)
            if wire_tools:
                render = lambda rendered: engine.render_chat(rendered, wire_tools)  # noqa: E731
    grammar = None
    if offered and request.tool_choice != "auto":
        if request.output_format is not None:
            raise InvalidRequest("response_format cannot be combined with a forced tool call (tool_choice "
                                 f"{request.tool_choice!r}): the answer is the call", param="response_format")
        grammar = forced_call_grammar(family, chosen_tools(request), request.parallel_tool_calls)
    elif request.output_format is not None:
        grammar = output_grammar(request)
    return ToolPlan(family, messages, render, parse=offered, grammar=grammar)


def chosen_tools(request: GenerateRequest) -> list[Tool]:
    tools = request.tools or []
    if request.tool_choice == "required":
        return tools
    chosen = [tool for tool in tools if tool.name == request.tool_choice]
    if not chosen:
        raise InvalidRequest(f"tool_choice names the function {request.tool_choice!r}, which is not in tools",
                             param="tool_choice")
    return chosen


def output_grammar(request: GenerateRequest) -> str:
    form = request.output_format
    if form.type == "json_object":
        return json_object_grammar()
    if form.type == "json_schema":
        return json_schema_grammar(form.schema or {}, form.strict)
    raise InvalidRequest(f"response_format type {form.type!r} is not supported", param="response_format")


# ------------------------------------------------------------ prompts


def openai_tool(tool: Tool) -> dict[str, Any]:
    described = {"description": tool.description} if tool.description else {}
    return {"type": "function", "function": {"name": tool.name, **described, "parameters": parameters_schema(tool)}}


def parameters_schema(tool: Tool) -> dict[str, Any]:
    return tool.parameters or {"type": "object", "properties": {}}


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history for a template that renders tools: contents as text, calls' arguments as objects."""
    out = []
    for message in messages:
        message = {**message, "content": message.get("content") or ""}
        if message.get("tool_calls"):
            message["tool_calls"] = [{**call, "function": {**call["function"],
                                                           "arguments": arguments_object(call["function"])}}
                                     for call in message["tool_calls"]]
        out.append(message)
    return out


def fallback_messages(messages: list[dict[str, Any]], tools: list[Tool] | None) -> list[dict[str, Any]]:
    """The history as plain-text messages any template renders: tools in the system text, calls and results as
    Hermes-style markup inside the messages' own text."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(call_markup(call["function"]["name"], arguments_object(call["function"]))
                              for call in message["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        system = FALLBACK_SYSTEM.format(tools="\n".join(json.dumps(openai_tool(tool), ensure_ascii=False)
                                                        for tool in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{system}" if out[0]["content"] else system}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


def call_markup(name: str, arguments: Any) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"


def arguments_object(function: dict[str, Any]) -> Any:
    """A call's arguments as the object its JSON text holds (text that is not JSON stays text)."""
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments if arguments is not None else {}


def refuse_control_text(engine: Engine, messages: list[dict[str, Any]], tools: list[dict] | None) -> None:
    """Tool definitions and call arguments become template markup, which may produce control tokens: refuse
    client text there that holds a control token's text (message contents are kept safe by `prompts.py`)."""
    parts = [("tools", json.dumps(tools, ensure_ascii=False))] if tools else []
    parts += [(f"messages[{index}].tool_calls", json.dumps(message["tool_calls"], ensure_ascii=False))
              for index, message in enumerate(messages) if message.get("tool_calls")]
    for param, text in parts:
        if any(special in text for special in engine.special_texts):
            raise InvalidRequest(f"{param} contains the text of a control token of this model, which its chat "
                                 "template would turn into markup", param=param)


# ------------------------------------------------------------ forced calls


def forced_call_grammar(family: str, tools: list[Tool], parallel: bool) -> str:
    """A Lark grammar for the family's call markup around arguments that validate against the tool's schema."""
    arguments_key = "parameters" if family == "llama3" else "arguments"
    call_schemas = [{"type": "object", "properties": {"name": {"const": tool.name},
                                                      arguments_key: parameters_schema(tool)},
                     "required": ["name", arguments_key], "additionalProperties": False} for tool in tools]
    lenient = not all(tool.strict for tool in tools)
    one = call_schemas[0] if len(call_schemas) == 1 else {"anyOf": call_schemas}
    many = MAX_PARALLEL_CALLS if parallel else 1
    if family == "llama3":  # one call per message
        rules = f"start: {json_rule(one, lenient)}"
    elif family == "mistral":
        listed = {"type": "array", "items": one, "minItems": 1, "maxItems": many}
        rules = f'start: "[TOOL_CALLS]" {json_rule(listed, lenient)}'
    else:
        repeat = f' ("\\n" call){{0,{many - 1}}}' if many > 1 else ""
        rules = (f"start: call{repeat}\n"
                 f'call: "<tool_call>\\n" {json_rule(one, lenient)} "\\n</tool_call>"')
    try:
        return lark_grammar(rules, param="tools")
    except InvalidRequest as exc:  # llguidance quotes the whole grammar: keep its first line, the reason
        reason = str(exc).splitlines()[0].rpartition("failed to compile JSON schema: ")[2]
        raise InvalidRequest(f"a tool's parameters schema cannot be used for a forced call: {reason}", param="tools",
                             code="invalid_schema") from None


def json_rule(schema: dict[str, Any], lenient: bool) -> str:
    """A `%json{...}` Lark term: compact JSON as `constraints.JSON_STYLE` writes it."""
    return "%json" + json.dumps({"x-guidance": {**JSON_STYLE, "lenient": lenient}, **schema}, ensure_ascii=False)
