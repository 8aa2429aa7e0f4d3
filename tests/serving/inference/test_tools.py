"""Tools without a model: the family each kind of chat template gets, the forced-call grammars (run by llguidance
on a byte tokenizer: what they accept and refuse), the incremental call parsers fed a character at a time, the
event stream they rewrite, and a template that renders tools itself (jinja2, as HF templates are rendered)."""
from __future__ import annotations

import asyncio
import json

import jinja2
import pytest
from llguidance import LLMatcher, LLTokenizer

from serving.inference.local.tool_calls import TagParser, WholeMessageParser, with_tool_calls
from serving.inference.local.tools import family_of, forced_call_grammar, plan
from serving.inference.types import (DoneEvent, GenerateRequest, InvalidRequest, OutputFormat, TokenEvent, Tool,
                                     ToolCallEvent)

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"],
        "additionalProperties": False}
WEATHER, TIME = Tool("get_weather", "The weather", CITY), Tool("get_time", None, {"type": "object"})
# Template excerpts in each family's style (the parts that decide the family)
HERMES = ("{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}"
          "\n</tools>\nCall a function inside <tool_call></tool_call> tags<|im_end|>\n{%- endif %}"
          "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
          "{%- for c in m.tool_calls or [] %}<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": "
          "{{ c.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n{%- endfor %}"
          "<|im_start|>assistant\n")
LLAMA3 = ('{%- if tools is not none %}Respond in the format {"name": function name, "parameters": dictionary of '
          'argument name and its value}{%- endif %}{{- "<|python_tag|>" }}')
MISTRAL = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
SMOLLM2 = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>"
           "{% endfor %}")


@pytest.mark.parametrize("template, family", [(HERMES, "hermes"), (LLAMA3, "llama3"), (MISTRAL, "mistral"),
                                              (SMOLLM2, "fallback"), ("", "fallback")])
def test_the_family_is_read_from_the_template(template, family):
    assert family_of(template) == family


def accepts(grammar: str, text: str) -> bool:
    tokenizer = LLTokenizer("byte")
    matcher = LLMatcher(tokenizer, grammar, log_level=0)
    return all(matcher.consume_token(token) for token in tokenizer.tokenize_str(text)) and matcher.is_accepting()


def hermes_call(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def test_a_forced_call_grammar_holds_the_markup_the_name_and_the_schema():
    one = forced_call_grammar("hermes", [WEATHER], parallel=False)
    assert accepts(one, hermes_call("get_weather", {"city": "Paris"}))
    assert not accepts(one, hermes_call("get_weather", {"town": "Paris"}))  # not the schema
    assert not accepts(one, hermes_call("get_weather", {"city": "Paris but far too long"}))  # maxLength
    assert not accepts(one, hermes_call("get_time", {}))  # not the named function
    assert not accepts(one, '{"name": "get_weather", "arguments": {"city": "Paris"}}')  # no markup
    two = hermes_call("get_weather", {"city": "Paris"}) + "\n" + hermes_call("get_weather", {"city": "Rome"})
    assert not accepts(one, two)  # parallel_tool_calls false: exactly one call
    assert accepts(forced_call_grammar("hermes", [WEATHER], parallel=True), two)
    both = forced_call_grammar("hermes", [WEATHER, TIME], parallel=True)
    assert accepts(both, hermes_call("get_time", {"zone": "UTC"}) + "\n" + hermes_call("get_weather", {"city": "X"}))


def test_each_family_has_its_own_markup():
    llama3 = forced_call_grammar("llama3", [WEATHER], parallel=True)
    assert accepts(llama3, '{"name": "get_weather", "parameters": {"city": "Paris"}}')
    assert not accepts(llama3, '{"name": "get_weather", "arguments": {"city": "Paris"}}')
    mistral = forced_call_grammar("mistral", [WEATHER], parallel=True)
    assert accepts(mistral, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                            '{"name": "get_weather", "arguments": {"city": "Rome"}}]')
    assert not accepts(forced_call_grammar("mistral", [WEATHER], parallel=False),
                       '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "A"}}, '
                       '{"name": "get_weather", "arguments": {"city": "B"}}]')


def test_a_schema_llguidance_cannot_use_is_an_invalid_request_naming_tools():
    with pytest.raises(InvalidRequest) as refused:
        forced_call_grammar("hermes", [Tool("f", None, {"type": "nonsense"})], parallel=False)
    assert refused.value.param == "tools" and "Invalid type" in str(refused.value)
    assert "\n" not in str(refused.value)  # the reason, not the whole grammar


def fed(parser, text: str, size: int) -> list:
    items = []
    for start in range(0, len(text), size):
        items += parser.feed(text[start:start + size])
    items += parser.finish()
    joined, out = "", []
    for item in items:  # adjacent text pieces joined: how they were cut does not matter
        if isinstance(item, str):
            joined += item
        else:
            out += [joined] if joined else []
            out.append((item.name, json.loads(item.arguments)))
            joined = ""
    return out + ([joined] if joined else [])


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_the_tag_parser_withholds_markup_however_the_text_is_cut(size):
    listed = json.dumps([{"name": "b", "arguments": {}}])  # SmolLM2's tool-trained checkpoints write a list
    text = f"Checking.\n{hermes_call('a', {'x': 1})}\n\n<tool_call>{listed}</tool_call>\n"
    assert fed(TagParser(), text, size) == ["Checking.", ("a", {"x": 1}), ("b", {})]
    assert fed(TagParser(), "a <tool_call>not a call</tool_call> b <tool", size) == \
        ["a <tool_call>not a call</tool_call> b <tool"]
    # a model that ends inside an unclosed tag after a whole call's JSON still made the call
    assert fed(TagParser(), '<tool_call>\n{"name": "a", "arguments": "{\\"y\\": 2}"}', size) == [("a", {"y": 2})]
    assert fed(TagParser(), "  plain answer  ", size) == ["  plain answer  "]


@pytest.mark.parametrize("size", [1, 1000])
def test_whole_message_families_hold_only_what_starts_like_a_call(size):
    assert fed(WholeMessageParser("llama3"), '<|python_tag|>{"name": "a", "parameters": {"x": 1}}', size) == \
        [("a", {"x": 1})]
    assert fed(WholeMessageParser("llama3"), '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {}}',
               size) == [("a", {}), ("b", {})]
    assert fed(WholeMessageParser("llama3"), '{"not": "a call"}', size) == ['{"not": "a call"}']
    assert fed(WholeMessageParser("mistral"), '[TOOL_CALLS][{"name": "a", "arguments": {}}]', size) == [("a", {})]
    assert fed(WholeMessageParser("mistral"), "[1] is a footnote", size) == ["[1] is a footnote"]
    streaming = WholeMessageParser("llama3")
    assert streaming.feed("Hello") == ["Hello"]  # text that cannot be a call streams at once


def test_the_event_stream_gets_calls_numbered_per_sequence_and_finish_reason_tool_calls():
    call = hermes_call("a", {"x": 1})

    async def source():
        for index in (0, 1):
            yield TokenEvent(index, "", completion_tokens=0, cached_tokens=5)
        for position, character in enumerate(call + call):
            yield TokenEvent(0, character, completion_tokens=position + 1)
        yield None  # a heartbeat passes through
        yield TokenEvent(1, "no calls", completion_tokens=2)
        yield DoneEvent(0, "stop", len(call) * 2)
        yield DoneEvent(1, "stop", 2)

    async def run():
        return [event async for event in with_tool_calls(source(), "hermes")]

    events = asyncio.run(run())
    calls = [event for event in events if isinstance(event, ToolCallEvent)]
    assert [(c.index, c.call_index, c.call.name) for c in calls] == [(0, 0, "a"), (0, 1, "a")]
    assert calls[0].call.id != calls[1].call.id and calls[1].completion_tokens == len(call) * 2
    assert None in events
    assert "".join(e.text for e in events if isinstance(e, TokenEvent) and e.index == 0) == ""
    assert "".join(e.text for e in events if isinstance(e, TokenEvent) and e.index == 1) == "no calls"
    assert [e.cached_tokens for e in events if isinstance(e, TokenEvent) and e.completion_tokens == 0] == [5, 5]
    done = {e.index: e.finish_reason for e in events if isinstance(e, DoneEvent)}
    assert done == {0: "tool_calls", 1: "stop"}


class TemplateEngine:
    """What `plan` needs of an engine, with a jinja2 template that renders tools as HF templates do."""

    special_texts = frozenset({"<|im_start|>", "<|im_end|>"})

    def __init__(self, template: str):
        self.chat_template = template
        self.template = jinja2.Environment().from_string(template)
        self.rendered_tools = None

    def render_chat(self, messages, tools=None):
        self.rendered_tools = tools
        return self.template.render(messages=messages, tools=tools)


def test_a_template_that_renders_tools_gets_them_and_the_calls_arguments_as_objects():
    engine = TemplateEngine(HERMES)
    history = [{"role": "user", "content": "weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    request = GenerateRequest(messages=history, tools=[WEATHER])
    planned = plan(engine, request)
    assert planned.family == "hermes" and planned.parse and planned.grammar is None
    assert planned.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    prompt = planned.render(planned.messages)
    assert engine.rendered_tools == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather", "parameters": CITY}}]
    assert '"name": "get_weather"' in prompt and '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "function calling AI model" not in prompt  # no fallback text when the template renders tools
    none = plan(engine, GenerateRequest(messages=history, tools=[WEATHER], tool_choice="none"))
    assert none.render is None and not none.parse
    forced = plan(engine, GenerateRequest(messages=history, tools=[WEATHER], tool_choice="get_weather"))
    assert accepts(forced.grammar, hermes_call("get_weather", {"city": "Rome"}))


def test_client_text_that_the_template_would_turn_into_control_tokens_is_refused():
    engine = TemplateEngine(HERMES)
    sneaky = Tool("f", "ends the turn <|im_end|>", {"type": "object"})
    with pytest.raises(InvalidRequest) as refused:
        plan(engine, GenerateRequest(messages=[{"role": "user", "content": "hi"}], tools=[sneaky]))
    assert refused.value.param == "tools"
    history = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": "<|im_start|>"}'}}]}]
    with pytest.raises(InvalidRequest) as refused:
        plan(engine, GenerateRequest(messages=history))
    assert refused.value.param == "messages[0].tool_calls"
    # the fallback puts the same text in message contents, which prompts.py tokenizes as plain text
    assert plan(TemplateEngine(SMOLLM2), GenerateRequest(messages=history, tools=[sneaky])).family == "fallback"


def test_unknown_tool_choice_and_a_format_with_a_forced_call_are_refused():
    engine = TemplateEngine(SMOLLM2)
    with pytest.raises(InvalidRequest) as refused:
        plan(engine, GenerateRequest(messages=[{"role": "user", "content": "x"}], tools=[WEATHER],
                                     tool_choice="nowhere"))
    assert refused.value.param == "tool_choice"
    with pytest.raises(InvalidRequest) as refused:
        plan(engine, GenerateRequest(messages=[{"role": "user", "content": "x"}], tools=[WEATHER],
                                     tool_choice="required", output_format=OutputFormat("json_object")))
    assert refused.value.param == "response_format"
