"""The agent-facing APIs on the MLX engine, end to end: the official anthropic and openai SDKs against gunicorn
serving the tiny random-weight model on MLX. Its answers are noise, so what is checked is what the grammar
guarantees whatever the weights: a forced tool call (Anthropic `tool_use`, a Responses `function_call`) whose
arguments validate against the tool's schema, and a strict `text.format` JSON schema answer, whole and streamed.
(The same on llama.cpp with the real SmolLM2: test_anthropic.py, test_responses.py, test_tool_calls.py.)"""
from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest

from tests.serving.conftest import start_server, stop_server

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Rome", "Tokyo"]},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
VERDICT = {"type": "object", "properties": {
    "answer": {"type": "integer", "minimum": 0, "maximum": 9},
    "sure": {"type": "boolean"}}, "required": ["answer", "sure"], "additionalProperties": False}
ASK = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def url(tmp_path_factory, tiny_mlx):
    server = start_server(tmp_path_factory.mktemp("agents-mlx"), tiny_mlx)
    yield server.url
    stop_server(server.process)


def test_anthropic_forced_tool_use_whole_and_streamed(url):
    client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=120)
    tool = {"name": "get_weather", "description": "The current weather in a city", "input_schema": WEATHER}
    asked = dict(model="tiny", max_tokens=96, messages=[{"role": "user", "content": ASK}], tools=[tool],
                 tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True})
    message = client.messages.create(**asked)
    streamed_events = []
    with client.messages.stream(**asked) as stream:
        streamed_events = [event.type for event in stream]
        streamed = stream.get_final_message()
    for reply in (message, streamed):
        assert reply.stop_reason == "tool_use", reply
        [call] = [block for block in reply.content if block.type == "tool_use"]
        assert call.name == "get_weather"
        jsonschema.validate(call.input, WEATHER)
    assert streamed_events[0] == "message_start" and streamed_events[-1] == "message_stop"


def test_responses_forced_function_call_whole_and_streamed(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    tool = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
            "parameters": WEATHER, "strict": True}
    whole = client.responses.create(model="tiny", input=ASK, tools=[tool], tool_choice="required",
                                    parallel_tool_calls=False, max_output_tokens=96)
    [call] = [item for item in whole.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    events = list(client.responses.create(model="tiny", input=ASK, tools=[tool], parallel_tool_calls=False,
                                          tool_choice={"type": "function", "name": "get_weather"},
                                          max_output_tokens=96, stream=True))
    assert events[-1].type == "response.completed"
    [done] = [event for event in events if event.type == "response.function_call_arguments.done"]
    jsonschema.validate(json.loads(done.arguments), WEATHER)


def test_responses_strict_json_schema_whole_and_streamed(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    text = {"format": {"type": "json_schema", "name": "verdict", "schema": VERDICT, "strict": True}}
    whole = client.responses.create(model="tiny", input="Is 2 + 2 four?", text=text, max_output_tokens=64,
                                    temperature=1.0)
    assert whole.status == "completed"
    jsonschema.validate(json.loads(whole.output_text), VERDICT)
    events = list(client.responses.create(model="tiny", input="Is 2 + 2 four?", text=text, max_output_tokens=64,
                                          temperature=1.0, stream=True))
    [done] = [event for event in events if event.type == "response.output_text.done"]
    jsonschema.validate(json.loads(done.text), VERDICT)
